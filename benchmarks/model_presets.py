"""Size the CPU ("small") Hermes preset: parameter count and forward time of candidate shapes.

Run from the repository root (takes a few minutes on 2 cores)::

    .venv/bin/python benchmarks/model_presets.py [--threads 2] [--size 96] [--tasks 7] [--repeats 3] [--paper]

Each candidate is timed in inference mode on one ``size``^3 single-channel input querying ``tasks``
tasks, after one warm-up pass, in ``repeats`` round-robin rounds (so background load hits all
candidates alike); the table reports the best and the median wall time, and the best process CPU
time divided by the thread count (closer to the uncontended wall time on a busy machine). Parameter counts use
a 72-task, 6-modality pool (the size of the original Hermes-R pools).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from UniversalSegLib.models import HermesConfig, HermesNet, preset

CANDIDATES: dict[str, dict] = {
    "A 16-160": {"widths": (16, 32, 64, 128, 160), "fusion_blocks": (1, 1, 2, 1, 1)},
    "B 16-96-128": {"widths": (16, 32, 64, 96, 128), "fusion_blocks": (1, 1, 2, 1, 1)},
    "C 16-96-128 1blk": {"widths": (16, 32, 64, 96, 128), "fusion_blocks": (1, 1, 2, 1, 1),
                         "blocks_per_stage": 1},
    "D 16-96-96": {"widths": (16, 32, 64, 96, 96), "fusion_blocks": (1, 1, 2, 1, 1)},
    "E 16-96-96 fb22422": {"widths": (16, 32, 64, 96, 96), "fusion_blocks": (2, 2, 4, 2, 2)},
    "F 24-96-96": {"widths": (24, 48, 64, 96, 96), "fusion_blocks": (1, 1, 2, 1, 1)},
    "G 16-64-96": {"widths": (16, 32, 64, 64, 96), "fusion_blocks": (1, 1, 2, 1, 1)},
}


def forward_seconds(net: HermesNet, size: int, tasks: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of one inference-mode forward on a ``size``^3 input, ``tasks`` tasks."""
    cfg = net.config
    image = torch.randn(1, cfg.in_channels, size, size, size)
    task_idx = torch.arange(tasks).unsqueeze(0) % cfg.num_tasks
    with torch.inference_mode():
        wall, cpu = time.perf_counter(), time.process_time()
        net(image, task_idx, torch.zeros(1, dtype=torch.long))
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--tasks", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper", action="store_true", help="also time the paper preset (slow)")
    parser.add_argument("--only", default="", help="comma-separated candidate letters, e.g. A,D")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    rows = {name: HermesConfig(72, 6, **kw) for name, kw in CANDIDATES.items() if not only or name[0] in only}
    small = preset("small", 72, 6)
    if small not in rows.values():
        rows["preset small"] = small
    if args.paper:
        rows["preset paper"] = preset("paper", 72, 6)
    nets = {name: HermesNet(cfg).eval() for name, cfg in rows.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in nets}
    for net in nets.values():
        forward_seconds(net, args.size, args.tasks)  # warm-up
    # Round-robin so that background load on a shared machine hits every candidate alike.
    for _ in range(args.repeats):
        for name, net in nets.items():
            times[name].append(forward_seconds(net, args.size, args.tasks))
    walls = {name: [w for w, _ in t] for name, t in times.items()}
    cpus = {name: [c for _, c in t] for name, t in times.items()}
    print(f"{args.size}^3 input, {args.tasks} tasks, {args.threads} threads, {args.repeats} rounds")
    print(f"{'candidate':<20} {'widths':<26} {'fusion':<16} {'blocks':>6} {'params (M)':>10} "
          f"{'best (s)':>9} {'median (s)':>10} {'cpu/threads (s)':>15}")
    for name, net in nets.items():
        cfg, params = net.config, sum(p.numel() for p in net.parameters())
        print(f"{name:<20} {str(cfg.widths):<26} {str(cfg.fusion_blocks):<16} {cfg.blocks_per_stage:>6} "
              f"{params / 1e6:>10.2f} {min(walls[name]):>9.2f} {statistics.median(walls[name]):>10.2f} "
              f"{min(cpus[name]) / args.threads:>15.2f}"
              + ("  <- preset small" if cfg == small else ""))


if __name__ == "__main__":
    main()
