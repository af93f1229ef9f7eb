"""What a training run reports: CSV logs, TensorBoard, ``curves.png``, ``train.log`` and the progress bar.

Rank 0 writes ``train_log.csv`` (one row per ``log_every`` iterations) and ``val_log.csv`` (one row
per validation) into the run folder; a resumed run first drops the rows written after the
checkpoint it resumes from, so the logs read as one uninterrupted run.

>>> bar = progress_bar(False, 10, "train"); bar.update(1); bar.close()
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class RunLog:
    """CSV logs (``train_log.csv``, ``val_log.csv``), optional TensorBoard, and ``curves.png``; rank 0 only."""

    TRAIN_FIELDS = ("iteration", "loss", "segmentation", "bce", "dice", "modality", "lr", "grad_norm",
                    "seconds_per_iteration")

    def __init__(self, folder: Path, start: int, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        self.writer = None
        if not enabled:
            return
        for name in ("train_log.csv", "val_log.csv"):  # drop rows written after the checkpoint resumed from
            path = folder / name
            if path.is_file():
                rows = list(csv.reader(path.open()))
                kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start]
                with path.open("w", newline="") as f:
                    csv.writer(f).writerows(kept)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start + 1 if start else None)
        except Exception:  # tensorboard is optional
            self.writer = None

    def train(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append("train_log.csv", self.TRAIN_FIELDS, row)
        if self.writer:
            for k, v in row.items():
                if k != "iteration":
                    self.writer.add_scalar(f"train/{k}", v, row["iteration"])

    def val(self, iteration: int, scores: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append("val_log.csv", ("iteration", "mean_dice", "dice_per_label"),
                     {"iteration": iteration, "mean_dice": scores.get("mean", float("nan")),
                      "dice_per_label": json.dumps({k: round(v, 4) for k, v in scores.items() if k != "mean"})})
        if self.writer:
            for k, v in scores.items():
                self.writer.add_scalar(f"val/{k}", v, iteration)
            self.writer.flush()
        self.plot()

    def _append(self, name: str, fields: Sequence[str], row: dict) -> None:
        path = self.folder / name
        new = not path.is_file()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields))
            if new:
                w.writeheader()
            w.writerow(row)

    def plot(self) -> None:
        """``curves.png``: training loss (raw and smoothed) and validation Dice per dataset and mean."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:
            return
        train = list(csv.DictReader((self.folder / "train_log.csv").open())) \
            if (self.folder / "train_log.csv").is_file() else []
        val = list(csv.DictReader((self.folder / "val_log.csv").open())) \
            if (self.folder / "val_log.csv").is_file() else []
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        if train:
            it = np.array([int(r["iteration"]) for r in train])
            loss = np.array([float(r["loss"]) for r in train])
            a.plot(it, loss, alpha=0.3, label="loss")
            k = max(1, len(loss) // 50)
            a.plot(it[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
            a.set_xlabel("iteration")
            a.set_title("training loss")
            a.legend()
        if val:
            val_it = [int(r["iteration"]) for r in val]
            per = [json.loads(r["dice_per_label"]) for r in val]
            datasets = sorted({k.split("/")[0] for p in per for k in p})
            for d in datasets:
                b.plot(val_it, [np.mean([v for k, v in p.items() if k.startswith(d + "/")] or [np.nan]) for p in per],
                       marker=".", label=d)
            b.plot(val_it, [float(r["mean_dice"]) for r in val], "k-", marker="o", label="mean")
            b.set_ylim(0, 1)
            b.set_xlabel("iteration")
            b.set_title("validation Dice (EMA weights)")
            b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.folder / "curves.png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def attach_file_log(path: Path) -> None:
    """Copy the ``UniversalSeg`` log (INFO and up) to ``path`` (once per path)."""
    root = logging.getLogger("UniversalSeg")
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar when ``enabled``, else an object with the same methods that does nothing."""
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    class _Null:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

        def set_postfix(self, **kw: Any) -> None:
            pass

    return _Null()
