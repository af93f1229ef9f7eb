"""Why training draws a step's samples from one dataset and inference runs windows in pairs, on CPU.

Run from the repository root (about two minutes on 2 quiet cores)::

    .venv/bin/python benchmarks/cpu_batch.py [--config configs/archive/batched.yaml] [--threads 2] [--repeats 3]

For each dataset of the config, one training step's forward and backward pass of the configured network
on that dataset's patch is timed with batches of 1 and 2 patches, in the default (channels-first)
and the channels-last memory format; the table gives the best wall time per sample. With one patch,
PyTorch takes its naive ``slow_conv3d`` for most layers of thin inputs (its heuristic wants a batch
above one or a large product of the first four dimensions), while a pair goes to oneDNN.
"""

from __future__ import annotations

import argparse
import time

import torch

from UniversalSegLib.training.config import load_config
from UniversalSegLib.training.trainer import build_model


def seconds_per_sample(model: torch.nn.Module, patch_zyx: tuple[int, ...], batch: int, channels_last: bool,
                       repeats: int) -> float:
    """Best wall time of one forward + backward over ``batch`` random patches, divided by ``batch``."""
    image = torch.randn(batch, 1, *patch_zyx)
    if channels_last:
        image = image.to(memory_format=torch.channels_last_3d)
    tasks = torch.zeros(batch, 3, dtype=torch.long) + torch.arange(3)
    modality = torch.zeros(batch, dtype=torch.long)
    best = float("inf")
    for _ in range(repeats + 1):  # the first round warms up
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(image, tasks, modality).logits.float().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/archive/batched.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    plain = build_model(config, num_tasks=20, num_modalities=8)
    last = build_model(config, num_tasks=20, num_modalities=8).to(memory_format=torch.channels_last_3d)
    last.load_state_dict(plain.state_dict())
    print(f"# {args.config}, {args.threads} threads, torch {torch.__version__}: seconds per sample "
          "(forward + backward)\n")
    print("| dataset | patch (x, y, z) | batch 1 | batch 2 | batch 1, channels-last | batch 2, channels-last |")
    print("|---|---|---|---|---|---|")
    for spec in config.datasets:
        patch = tuple(spec.patch_size)[::-1]
        cells = [seconds_per_sample(m, patch, b, m is last, args.repeats) for m in (plain, last) for b in (1, 2)]
        print(f"| {spec.name} | {tuple(spec.patch_size)} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
