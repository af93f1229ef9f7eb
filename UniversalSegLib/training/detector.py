"""Train the 2D detector (:class:`~UniversalSegLib.detect.model.BoxNet`) from scratch on HC18: the whole recipe.

Data: the HC18 training subjects (``splits/us_fetalhead_hc18.json``), boxes from the masks
(:mod:`.slices2d`), resized to ``size`` x ``size``. Augmentation on each batch: random affine (flip,
rotation, scale, shift) applied to image *and* mask, boxes taken from the moved mask; gamma, contrast,
brightness and noise. Loss: CenterNet focal loss on the centre heat map (Gaussian targets) + GIoU on the
boxes predicted near the centre. AdamW, cosine schedule, a wall-clock cap; checkpoints every
``eval_every`` steps (``last.pt`` resumes, ``best.pt`` has the best validation mean box IoU).

    python -m UniversalSegLib.training.detector --out out/detector --minutes 30     # train / resume
    python -m UniversalSegLib.training.detector --out out/detector --overwrite \\
        --export UniversalSegLib/weights/boxnet_hc18.pt                             # the shipped file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .. import __version__
from ..detect.model import FORMAT, STRIDE, BoxNet, Detector, box_iou, cell_centres, decode, ltrb_to_boxes
from ..safe_write import atomic_output, check_outputs
from .slices2d import HC18, load_hc18, mask_boxes

RECIPE: dict[str, Any] = {
    "dataset": HC18, "size": 192, "widths": [16, 32, 64, 96, 128], "class_names": ["fetal_head"],
    "batch": 16, "lr": 2e-3, "weight_decay": 1e-4, "warmup": 50, "steps": 2000, "minutes": 32.0,
    "eval_every": 250, "seed": 0, "threads": 1,
    "augment": {"flip": 0.5, "rotate_deg": 20.0, "scale": [0.8, 1.2], "shift": 0.12, "gamma": [0.7, 1.5],
                "contrast": [0.75, 1.3], "brightness": 0.1, "noise": 0.03},
    "loss": {"focal_alpha": 2.0, "focal_beta": 4.0, "giou_weight": 2.0, "positive_heat": 0.5},
    "score_threshold": 0.3, "iou_threshold": 0.5,
}


def _resized(items: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([F.interpolate(torch.from_numpy(it.image)[None, None], size=(size, size), mode="bilinear",
                                      align_corners=False, antialias=True) for it in items])
    masks = torch.cat([F.interpolate(torch.from_numpy(it.mask)[None, None].float(), size=(size, size),
                                     mode="nearest") for it in items])
    return images, masks


def augment(images: torch.Tensor, masks: torch.Tensor, cfg: dict, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine on images and masks together, then intensity changes on the images (values 0-1)."""
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle = uniform(-cfg["rotate_deg"], cfg["rotate_deg"]) * math.pi / 180
    scale = uniform(*cfg["scale"])
    flip = torch.where(torch.rand(b, generator=gen) < cfg["flip"], -1.0, 1.0)
    tx, ty = uniform(-cfg["shift"], cfg["shift"]) * 2, uniform(-cfg["shift"], cfg["shift"]) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gamma = uniform(*cfg["gamma"])[:, None, None, None]
    contrast = uniform(*cfg["contrast"])[:, None, None, None]
    bright = uniform(-cfg["brightness"], cfg["brightness"])[:, None, None, None]
    images = images.clamp(0, 1) ** gamma
    images = (images - 0.5) * contrast + 0.5 + bright
    images = images + cfg["noise"] * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(images.shape, generator=gen)
    return images, masks


def standardise_batch(images: torch.Tensor) -> torch.Tensor:
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (images - mean) / std


def targets(masks: torch.Tensor, num_classes: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heat-map targets (B, C, h, w), box targets (B, 4, h, w) and regression weights (B, h, w) from masks."""
    b = masks.shape[0]
    g = size // STRIDE
    heat = torch.zeros(b, num_classes, g, g)
    boxes = torch.zeros(b, 4, g, g)
    weight = torch.zeros(b, g, g)
    cx, cy = cell_centres(g, g)
    for i in range(b):
        found, labels = mask_boxes(masks[i, 0].numpy().astype(np.uint8), list(range(1, num_classes + 1)))
        for box, label in zip(found, labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            w, h = x1 - x0, y1 - y0
            if w < 4 or h < 4:
                continue
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            px, py = (math.floor(mx / STRIDE) + 0.5) * STRIDE, (math.floor(my / STRIDE) + 0.5) * STRIDE
            sx, sy = max(w / 6, 0.8 * STRIDE), max(h / 6, 0.8 * STRIDE)
            gauss = torch.exp(-((cx - px) ** 2) / (2 * sx ** 2) - ((cy - py) ** 2) / (2 * sy ** 2))
            c = int(label) - 1
            heat[i, c] = torch.maximum(heat[i, c], gauss)
            better = gauss > weight[i]
            weight[i] = torch.where(better, gauss, weight[i])
            for k, v in enumerate((x0, y0, x1, y1)):
                boxes[i, k] = torch.where(better, torch.tensor(v), boxes[i, k])
    return heat, boxes, weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.ge(0.999).float()
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p ** alpha * (1 - target) ** beta * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1.0)


def giou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of box rows (n, 4)."""
    lt = torch.maximum(pred[:, :2], gt[:, :2])
    rb = torch.minimum(pred[:, 2:], gt[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp_min(0).prod(1)
    area_g = (gt[:, 2:] - gt[:, :2]).clamp_min(0).prod(1)
    union = area_p + area_g - inter
    iou = inter / union.clamp_min(1e-6)
    hull = (torch.maximum(pred[:, 2:], gt[:, 2:]) - torch.minimum(pred[:, :2], gt[:, :2])).clamp_min(0).prod(1)
    return 1 - iou + (hull - union) / hull.clamp_min(1e-6)


def loss_fn(net: BoxNet, images: torch.Tensor, masks: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, dict]:
    heat_t, box_t, weight = targets(masks, net.num_classes, images.shape[-1])
    heat, ltrb = net(standardise_batch(images))
    lf = focal_loss(heat, heat_t, cfg["focal_alpha"], cfg["focal_beta"])
    sel = weight > cfg["positive_heat"]
    if sel.any():
        pred = ltrb_to_boxes(ltrb).permute(0, 2, 3, 1)[sel]
        gt = box_t.permute(0, 2, 3, 1)[sel]
        lg = (giou_loss(pred, gt) * weight[sel]).sum() / weight[sel].sum()
    else:
        lg = ltrb.sum() * 0
    return lf + cfg["giou_weight"] * lg, {"focal": float(lf.detach()), "giou": float(lg.detach())}


@torch.no_grad()
def evaluate(net: BoxNet, images: torch.Tensor, gt_boxes: list[np.ndarray], sizes: list[tuple[int, int]],
             size: int) -> dict[str, float]:
    """Top-scoring box per image against the ground-truth box: mean IoU, recall@0.5, images with no detection."""
    net.eval()
    ious, missed = [], 0
    for first in range(0, len(images), 32):
        heat, ltrb = net(standardise_batch(images[first:first + 32]))
        for j, (boxes, _, _scores) in enumerate(decode(heat, ltrb, 0.0, top_k=1)):
            i = first + j
            h, w = sizes[i]
            if not len(boxes):
                missed += 1
                ious.append(0.0)
                continue
            box = boxes[0] * np.array([w / size, h / size, w / size, h / size], np.float32)
            ious.append(float(box_iou(box[None], gt_boxes[i][:1])[0, 0]))
    net.train()
    arr = np.asarray(ious)
    return {"mean_box_iou": float(arr.mean()), "recall_at_0.5": float((arr >= 0.5).mean()), "missed": missed}


def train(out: Path, recipe: dict, minutes: float | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(recipe["threads"]))
    torch.manual_seed(recipe["seed"])
    size = int(recipe["size"])
    train_items, val_items = load_hc18("train"), load_hc18("val")
    tr_images, tr_masks = _resized(train_items, size)
    va_images, _ = _resized(val_items, size)
    va_boxes = [it.boxes for it in val_items]
    va_sizes = [it.image.shape for it in val_items]
    net = BoxNet(len(recipe["class_names"]), tuple(recipe["widths"]))
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = int(recipe["steps"])
    step, best, history = 0, -1.0, []
    gen = torch.Generator().manual_seed(recipe["seed"])
    last = out / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, best, history = state["step"], state["best"], state["history"]
        gen.set_state(state["gen"])
        print(f"resumed at step {step} (best mean box IoU {best:.4f})", flush=True)
    budget = 60 * float(minutes if minutes is not None else recipe["minutes"])
    start = time.monotonic()
    net.train()
    running: list[float] = []
    while step < steps and time.monotonic() - start < budget:
        lr = recipe["lr"] * min(1.0, (step + 1) / recipe["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(tr_images), (int(recipe["batch"]),), generator=gen)
        images, masks = augment(tr_images[idx], tr_masks[idx], recipe["augment"], gen)
        loss, parts = loss_fn(net, images, masks, recipe["loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        if step % int(recipe["eval_every"]) == 0 or step == steps:
            metrics = evaluate(net, va_images, va_boxes, va_sizes, size)
            history.append({"step": step, "loss": float(np.mean(running)), **parts, **metrics,
                            "minutes": round((time.monotonic() - start) / 60, 2)})
            running = []
            print(json.dumps(history[-1]), flush=True)
            if metrics["mean_box_iou"] > best:
                best = metrics["mean_box_iou"]
                torch.save({"net": net.state_dict(), "step": step, "metrics": metrics}, out / "best.pt")
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                        "history": history, "gen": gen.get_state(), "recipe": recipe}, out / ".last.tmp")
            (out / ".last.tmp").replace(last)
    return {"step": step, "best": best}


def export(out: Path, target: Path, recipe: dict, overwrite: bool = False) -> dict:
    """Write ``best.pt`` as shipped weights (float16) + the manifest beside them, atomically.

    An existing ``target`` (or its manifest) is replaced only with ``overwrite``; the run's own checkpoints are
    never a target.
    """
    sources = [out / "best.pt", out / "last.pt"]
    check_outputs([target, target.with_suffix(".json")], sources, overwrite)
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    history = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["history"]
    config = {"num_classes": len(recipe["class_names"]), "widths": list(recipe["widths"]), "size": recipe["size"],
              "class_names": recipe["class_names"], "score_threshold": recipe["score_threshold"],
              "iou_threshold": recipe["iou_threshold"]}
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in best["net"].items()}
    with atomic_output(target, overwrite, sources) as tmp:
        torch.save({"format": FORMAT, "version": 1, "config": config, "state_dict": state,
                    "metadata": {"step": best["step"]}}, tmp)
    # the shipped (float16) weights, scored as the run-time loads them
    detector = Detector.load(target)
    val = load_hc18("val")
    images, _ = _resized(val, int(recipe["size"]))
    metrics = evaluate(detector.net, images, [it.boxes for it in val], [it.image.shape for it in val],
                       int(recipe["size"]))
    manifest = {
        "file": target.name, "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "format": FORMAT, "requires_universalseg": ">=0.9,<1.0", "universalseg_version": __version__,
        "contents": "BoxNet 2D detector (our code), trained from scratch here; no pretrained weights",
        "licence": "Apache-2.0 (code and weights; trained only on CC BY 4.0 data)",
        "data": {HC18: {"source": f"shared/data/{HC18}", "licence": "HC18 challenge data, CC BY 4.0 (Zenodo)",
                        "split": "train subjects of splits/us_fetalhead_hc18.json (by subject)",
                        "training_images": 684 if len(val) == 177 else None}},
        "recipe": {**recipe, "script": "UniversalSegLib/training/detector.py"},
        "steps_trained": history[-1]["step"] if history else None, "best_step": best["step"],
        "validation": {"images": len(val), "subjects": "validation subjects of splits/us_fetalhead_hc18.json",
                       "shipped_weights": metrics, "protocol": "top-scoring box vs the mask's box"},
        "history": history,
    }
    with atomic_output(target.with_suffix(".json"), overwrite, sources) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/detector"))
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap for this call (resumable)")
    parser.add_argument("--export", type=Path, default=None, help="write best.pt as shipped weights + manifest")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --export file")
    args = parser.parse_args(argv)
    if args.export:
        print(json.dumps(export(args.out, args.export, RECIPE, args.overwrite)["validation"], indent=1))
    else:
        print(train(args.out, RECIPE, args.minutes))


if __name__ == "__main__":
    main()
