"""Segmenter: one loaded model applied to one image, from its own grid back to its own grid.

Path of the data: input image -> canonical LPS grid at the model's spacing -> per-modality
normalisation -> MONAI sliding-window inference (sigmoid per task) -> each probability map
resampled onto the input's exact grid -> threshold -> label map -> largest component of the chosen labels
(values 1..N in the order of the requested tasks; overlaps go to the higher probability). Groups trained at
different spacings or patch sizes go through this path in separate passes that meet on the input grid.

>>> segmenter = Segmenter(load_checkpoint("model.pt"))  # doctest: +SKIP
>>> result = segmenter.run(image, tasks, modality, InferenceOptions(keep_largest=True))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from .catalog import Modality, Task
from .errors import CancelledError, CatalogError, InputError
from .policy import InferencePolicy
from .preprocess import canonical_grid, normalise, target_spacing, target_window, to_grid

if TYPE_CHECKING:
    from .profiling import Profile

Progress = Callable[[str, float], None]
"""Called with a stage name ("prepare", "infer", "postprocess") and the fraction done in [0, 1]."""


@dataclass
class InferenceOptions:
    """Sliding-window and post-processing settings; ``window=None`` takes the patch size the model was
    trained on for the request's group (else its default window). The per-task defaults come from the model's
    inference policy (its manifest's ``inference_policy`` block, :mod:`UniversalSegLib.policy`; the catalog's
    values for a model without one). ``threshold``: one probability threshold for every task, or ``None`` (the
    default) for each task's own. ``keep_largest``: keep only the largest connected component of every task (True),
    of none (False), or of the tasks the policy marks ``keep_largest`` (None, the default). ``mirror``: for the tasks
    the policy gives a ``mirror`` (the head and neck organs but the oesophagus), average the probabilities with
    those of the image mirrored left to right, paired organs swapped (True, the default: measured to help); twice
    the time for those passes."""

    window: tuple[int, int, int] | None = None
    overlap: float = 0.5
    batch_size: int = 2  # windows per forward pass; on CPU one alone takes a slow convolution path
    blend: str = "gaussian"
    threshold: float | None = None
    keep_largest: bool | None = None
    probabilities: bool = False
    mirror: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"window overlap {self.overlap} is outside [0, 1)", "use for example 0.5")
        if self.blend not in ("gaussian", "constant"):
            raise InputError(f"unknown blend mode '{self.blend}'", "use 'gaussian' or 'constant'")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold {self.threshold} is outside (0, 1)", "use for example 0.5")
        if self.window is not None and any(w <= 0 or w % 16 for w in self.window):
            raise InputError(f"window {self.window} is not a multiple of 16 on every axis",
                             "use sizes such as 64, 96 or 128")


@dataclass
class SegmentationResult:
    """A label map on the input's grid with the tasks its values stand for (value i+1 = tasks[i])."""

    labels: sitk.Image
    tasks: list[Task]
    modality: Modality
    probabilities: dict[str, sitk.Image] = field(default_factory=dict)
    seconds: float = 0.0
    model: str = ""

    def label_of(self, task_id: str) -> int:
        """The label value of a task, e.g. ``result.label_of("mandible") -> 3``."""
        return 1 + [t.id for t in self.tasks].index(task_id)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is usable else "cpu"; "cuda" without one -> :class:`InputError`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("a GPU (--device cuda) was asked for but CUDA is not available here",
                         "run with --device cpu (or auto), or install a CUDA build of torch")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device '{device}'", "use cpu, cuda or auto")
    return device


class Segmenter:
    """Applies a :class:`~UniversalSegLib.models.LoadedModel` to SimpleITK images.

    ``policy``: the model's inference policy (from its manifest); ``None`` runs every task with the catalog's.
    ``loaded`` may also be an :class:`~UniversalSegLib.onnx_runtime.OrtLoaded` (``backend == "onnx"``): the
    network then runs in ONNX Runtime and the sliding window in numpy, without importing torch or MONAI.
    """

    def __init__(self, loaded, device: str = "cpu", name: str = "", policy: InferencePolicy | None = None) -> None:
        self.loaded = loaded
        self.backend: str = getattr(loaded, "backend", "torch")
        self.name = name
        self.policy = policy
        if self.backend == "onnx":
            self.device = "cpu"
        else:
            self.device = resolve_device(device)
            self.loaded.model.to(self.device).eval()

    def with_policy(self, tasks: Sequence[Task]) -> list[Task]:
        """``tasks`` with this model's policy (keep-largest, mirror, refine) in place of the catalog's."""
        return [self.policy.apply(t) for t in tasks] if self.policy is not None else list(tasks)

    def threshold(self, task: Task, options: InferenceOptions) -> float:
        """The probability threshold of ``task``: the option's if set, else the policy's (0.5 without one)."""
        if options.threshold is not None:
            return options.threshold
        return self.policy.threshold(task.id) if self.policy is not None else 0.5

    def query(self, tasks: Sequence[Task], context: Sequence[Task] = ()) -> list[int]:
        """Task-pool rows for ``tasks`` followed by the extra ``context`` tasks, then the null token.

        The network was trained querying whole task lists, so the caller passes the requested
        tasks' group mates as context; only the requested channels are kept afterwards.
        """
        known = {tid: i for i, tid in enumerate(self.loaded.task_ids)}
        missing = [t.id for t in tasks if t.id not in known]
        if missing:
            raise CatalogError(
                f"the model was not trained for {', '.join(missing)}",
                f"choose among the tasks it knows ({', '.join(self.loaded.task_ids)}) or load another model",
            )
        rows = [known[t.id] for t in tasks]
        added = self.added_tasks()  # tasks added later (add-task) are never context: old outputs stay bit-identical
        rows += [known[t.id] for t in context if t.id in known and t.id not in added and known[t.id] not in rows]
        return rows + [self.loaded.model.null_task]

    def added_tasks(self) -> set[str]:
        """Ids of the tasks ``universalseg add-task`` added to this model: each runs in a pass of its own,
        never with other tasks, so the tasks the model had before see exactly the priors they saw before."""
        return set(self.loaded.inference.get("added_tasks") or ())

    def modality_row(self, modality: Modality, fallback: Callable[[str], Modality | None]) -> int:
        """Modality-pool row: the modality's own, else its catalog fallback chain (e.g. MR-FLAIR -> MR)."""
        current: Modality | None = modality
        while current is not None:
            if current.id in self.loaded.modality_ids:
                return self.loaded.modality_ids.index(current.id)
            current = fallback(current.fallback) if current.fallback else None
        raise CatalogError(
            f"the model has no prior for modality {modality.id}",
            f"choose one of {', '.join(self.loaded.modality_ids)} with --modality, or load another model",
        )

    def run(
        self,
        image: sitk.Image,
        tasks: Sequence[Task],
        modality: Modality,
        modality_row: int,
        options: InferenceOptions | None = None,
        context: Sequence[Task] = (),
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        profile: Profile | None = None,
    ) -> SegmentationResult:
        """Segment ``tasks`` in ``image``; the returned label map has ``image``'s exact grid.

        Tasks whose groups were trained at different spacings or patch sizes (e.g. the ACDC heart on its
        stored voxel grid and the left atrium at 1.25 mm) are run in separate passes, each at its own
        spacing and window with its own group mates as context, and merged on the input grid.
        ``profile`` (:class:`~UniversalSegLib.profiling.Profile`) collects the seconds of each stage.
        """
        options = options or InferenceOptions()
        report = progress or (lambda stage, fraction: None)
        start = time.perf_counter()
        tasks, context = self.with_policy(tasks), self.with_policy(context)  # the result carries the policy used
        self.query(tasks, context)  # unknown tasks fail before any work
        passes = self._passes(tasks, context, options)
        size = image.GetSize()[::-1]
        best = np.zeros(size, dtype=np.float32)
        labels = np.zeros(size, dtype=np.uint8 if len(tasks) < 256 else np.uint16)
        kept: dict[str, sitk.Image] = {}
        n = len(passes)
        for i, (pass_tasks, pass_context, spacing, window) in enumerate(passes):
            def step(stage: str, fraction: float, i: int = i) -> None:
                """Stages in order over all passes: the first pass's preparation, then inference throughout."""
                if stage == "infer":
                    report("infer", (i + fraction) / n)
                elif i == 0:
                    report(stage, fraction)

            rows = self.query(pass_tasks, pass_context)
            step("prepare", 0.0)
            with _stage(profile, "resample"):
                grid = canonical_grid(image, spacing)
                on_grid = to_grid(image, grid)
            with _stage(profile, "normalise"):
                net_input = normalise(on_grid, modality.kind)
            del on_grid
            step("prepare", 1.0)
            swap = self.mirror_order(rows, [*pass_tasks, *pass_context]) if options.mirror else None
            probabilities = self._infer(net_input, rows, modality_row, window, options, step, cancel, swap, profile)
            if i == n - 1:
                report("postprocess", 0.0)
            values = [1 + list(tasks).index(t) for t in pass_tasks]
            self._fold(probabilities[: len(pass_tasks)], grid, image, options, pass_tasks, values, best, labels,
                       kept, profile)
        with _stage(profile, "keep_largest"):
            out = self._keep_largest(labels, image, options, tasks)
        report("postprocess", 1.0)
        kept = {t.id: kept[t.id] for t in tasks if t.id in kept}
        return SegmentationResult(out, list(tasks), modality, kept, time.perf_counter() - start, self.name)

    def _passes(self, tasks: Sequence[Task], context: Sequence[Task], options: InferenceOptions
                ) -> list[tuple[list[Task], list[Task], tuple[float, float, float] | None, tuple[int, int, int]]]:
        """``[(tasks, context, spacing, window)]``: one pass per distinct trained (spacing, window) of the groups."""
        inference = self.loaded.inference
        added = self.added_tasks()

        def key(task: Task) -> tuple:
            group = f"task:{task.id}" if task.id in added else task.group  # an added task: its own pass and grid
            spacing = target_spacing(inference, [group])
            return spacing, tuple(options.window or target_window(inference, [group])), task.id in added and task.id

        passes: dict[tuple, tuple[list[Task], list[Task]]] = {}  # groups trained alike share a pass
        for task in tasks:
            passes.setdefault(key(task), ([], []))[0].append(task)
        for task in context:
            if key(task) in passes:
                passes[key(task)][1].append(task)
        return [(t, c, spacing, window) for (spacing, window, _), (t, c) in passes.items()]

    def mirror_order(self, rows: Sequence[int], tasks: Sequence[Task]) -> list[int | None] | None:
        """For each query row, the position of the row its structure becomes in the left-right mirror image, or
        ``None`` where its task has no policy ``mirror`` (or its partner is not queried); ``None`` when no
        task has one. The null token is not averaged.

        >>> segmenter.mirror_order(rows, [parotid_right, parotid_left, esophagus])  # doctest: +SKIP
        [1, 0, None, None]
        """
        by_id = {t.id: t for t in self.with_policy(tasks)}
        position = {self.loaded.task_ids[r]: i for i, r in enumerate(rows) if r < len(self.loaded.task_ids)}
        order: list[int | None] = []
        for row in rows:
            task = by_id.get(self.loaded.task_ids[row]) if row < len(self.loaded.task_ids) else None
            order.append(position.get(task.mirror) if task is not None and task.mirror else None)
        return order if any(i is not None for i in order) else None

    def _infer(self, net_input: np.ndarray, rows: list[int], modality_row: int, window: Sequence[int],
               options: InferenceOptions, report: Progress, cancel: Callable[[], bool] | None,
               mirror: list[int | None] | None = None, profile: Profile | None = None) -> np.ndarray:
        """Sliding-window probabilities [rows, z, y, x]; with ``mirror`` (see :meth:`mirror_order`) each row that
        has a partner is averaged with the partner's row of the x-mirrored input, flipped back."""
        # (z, y, x) array: shrink the window to the image (rounded up to 16, at least 32) so small crops cost little.
        roi = tuple(min(int(w), max(32, 16 * math.ceil(s / 16)))
                    for w, s in zip(window[::-1], net_input.shape, strict=True))
        total = _window_count(net_input.shape, roi, options.overlap)
        calls = math.ceil(total / options.batch_size) * (2 if mirror else 1)
        done = [0]
        # beyond the volume, its minimum: what training crops pad with (ACDC's 6-10 slices in a
        # 16-slice window: 0.41 -> 0.72 mean Dice against replicated border slices)
        cval = float(net_input.min())

        def network(forward: Callable[[Any], Any], mirrored: bool) -> Callable[[Any], Any]:
            """The predictor of one pass: cancel check, timed forward (probabilities), progress."""
            def predictor(windows: Any) -> Any:
                if cancel is not None and cancel():
                    raise CancelledError("segmentation cancelled", "run it again when you are ready")
                started = time.perf_counter()
                with _stage(profile, "mirror_network" if mirrored else "network"):
                    out = forward(windows)
                if profile is not None:
                    profile.window(time.perf_counter() - started, windows.shape[0], mirrored)
                done[0] += 1
                report("infer", min(1.0, done[0] / calls))
                return out
            return predictor

        report("infer", 0.0)
        if self.backend == "onnx":
            return self._infer_onnx(net_input, rows, modality_row, roi, options, mirror, network, cval, profile)
        with _stage(profile, "import"):  # MONAI's first import takes seconds
            import torch
            from monai.inferers import sliding_window_inference

        task_idx = torch.tensor([rows], device=self.device)
        modality_idx = torch.tensor([modality_row], device=self.device)

        def forward(windows: torch.Tensor) -> torch.Tensor:
            n = windows.shape[0]
            return torch.sigmoid(self.loaded.model(windows, task_idx.expand(n, -1), modality_idx.expand(n)).logits)

        tensor = torch.from_numpy(net_input)[None, None].to(self.device)

        def windows(volume: torch.Tensor, mirrored: bool) -> torch.Tensor:
            return sliding_window_inference(
                volume, roi, options.batch_size, network(forward, mirrored), overlap=options.overlap,
                mode=options.blend, padding_mode="constant", cval=cval,
            )[0].float()

        with torch.inference_mode():
            with _stage(profile, "sliding_window"):
                result = windows(tensor, False)
            if mirror is not None:  # the canonical grid is LPS, so the last (x) axis runs right to left
                with _stage(profile, "mirror"):
                    mirrored = torch.flip(windows(torch.flip(tensor, dims=[4]), True), dims=[3])
                    for row, partner in enumerate(mirror):
                        if partner is not None:
                            result[row] = (result[row] + mirrored[partner]) / 2
        return result.cpu().numpy()

    def _infer_onnx(self, net_input: np.ndarray, rows: list[int], modality_row: int, roi: tuple[int, ...],
                    options: InferenceOptions, mirror: list[int | None] | None,
                    network: Callable[[Callable[[Any], Any], bool], Callable[[Any], Any]], cval: float,
                    profile: Profile | None) -> np.ndarray:
        """:meth:`_infer` with ONNX Runtime and the numpy sliding window (same windows, weights and padding)."""
        with _stage(profile, "import"):
            from scipy.special import expit

            from .onnx_runtime import sliding_window

        task_idx = np.asarray([rows], dtype=np.int64)
        modality_idx = np.asarray([modality_row], dtype=np.int64)

        def forward(windows: np.ndarray) -> np.ndarray:
            n = windows.shape[0]
            logits = self.loaded.model(windows, np.repeat(task_idx, n, axis=0), np.repeat(modality_idx, n))
            return expit(logits, out=logits)

        def windows(volume: np.ndarray, mirrored: bool) -> np.ndarray:
            return sliding_window(volume, roi, options.batch_size, network(forward, mirrored), options.overlap,
                                  options.blend, cval)

        with _stage(profile, "sliding_window"):
            result = windows(net_input, False)
        if mirror is not None:  # the canonical grid is LPS, so the last (x) axis runs right to left
            with _stage(profile, "mirror"):
                mirrored = np.flip(windows(np.flip(net_input, axis=2), True), axis=3)
                for row, partner in enumerate(mirror):
                    if partner is not None:
                        result[row] = (result[row] + mirrored[partner]) / 2
        return result

    def _fold(self, probabilities: np.ndarray, grid: sitk.Image, image: sitk.Image, options: InferenceOptions,
              tasks: Sequence[Task], values: Sequence[int], best: np.ndarray, labels: np.ndarray,
              kept: dict[str, sitk.Image], profile: Profile | None = None) -> None:
        """Resample each task's probabilities from ``grid`` onto ``image``'s grid and threshold them into
        ``labels`` (value per task), where they beat the highest probability so far (``best``)."""
        for task, value, channel in zip(tasks, values, probabilities, strict=True):
            with _stage(profile, "resample_back"):
                on_grid = sitk.GetImageFromArray(channel)
                on_grid.CopyInformation(grid)
                native = to_grid(on_grid, image, sitk.sitkLinear, default=0.0)
                prob = sitk.GetArrayViewFromImage(native)
            with _stage(profile, "vote"):
                vote(prob, value, self.threshold(task, options), best, labels)
            if options.probabilities:
                kept[task.id] = native

    @staticmethod
    def _keep_largest(labels: np.ndarray, image: sitk.Image, options: InferenceOptions,
                      tasks: Sequence[Task]) -> sitk.Image:
        """The label map as an image on ``image``'s grid, chosen labels reduced to their largest piece.

        Tasks of one group marked ``keep_largest_joint`` (anatomy that touches, such as the heart's
        cavities and wall) first lose whatever lies outside the largest piece of their union: a false
        blob far from the heart goes even where it is larger than that label's true piece."""
        if options.keep_largest is not False:
            joint: dict[str, list[int]] = {}
            for value, task in enumerate(tasks, start=1):
                if task.keep_largest_joint:
                    joint.setdefault(task.group, []).append(value)
            for values in joint.values():
                union = np.isin(labels, values)
                labels[union & ~largest_component(union)] = 0
        for value, task in enumerate(tasks, start=1):  # on the final map, so each kept label is one piece
            if task.keep_largest if options.keep_largest is None else options.keep_largest:
                mask = labels == value
                labels[mask & ~largest_component(mask)] = 0
        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(image)
        return out


def _stage(profile: Profile | None, name: str) -> contextlib.AbstractContextManager:
    """``profile.stage(name)``, or nothing without a profile."""
    return contextlib.nullcontext() if profile is None else profile.stage(name)


def vote(prob: np.ndarray, value: int, threshold: float, best: np.ndarray, labels: np.ndarray) -> None:
    """Give ``value`` to the voxels of ``labels`` where ``prob`` reaches ``threshold`` and beats ``best`` (updated).

    >>> best, labels = np.zeros(3, np.float32), np.zeros(3, np.uint8)
    >>> vote(np.array([0.9, 0.6, 0.2]), 1, 0.5, best, labels); vote(np.array([0.7, 0.8, 0.4]), 2, 0.5, best, labels)
    >>> labels.tolist()
    [1, 2, 0]
    """
    win = (prob >= threshold) & (prob > best)
    labels[win] = value
    best[win] = prob[win]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (MONAI's transform needs scikit-image).

    >>> m = np.zeros((1, 1, 9), bool); m[0, 0, [0, 1, 2, 5, 6]] = True
    >>> np.flatnonzero(largest_component(m)).tolist()
    [0, 1, 2]
    """
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask
    return labelled == int(np.argmax(np.bincount(labelled.ravel())[1:])) + 1


def _window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window visits (same scan-interval rule)."""
    count = 1
    for size, window in zip(shape, roi, strict=True):
        interval = max(int(window * (1 - overlap)), 1)
        count *= 1 if size <= window else math.ceil((size - window) / interval) + 1
    return count
