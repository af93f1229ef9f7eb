"""Training configuration: one YAML file -> a checked, typed :class:`TrainConfig`; a multi-stage recipe
(``configs/universalseg-small.yaml``: the stages that build one model, in order) -> a :class:`Recipe`.

Relative paths in the YAML (``data_root``, each dataset ``path``, ``cache_dir``, ``output_dir``,
``splits_dir``) resolve against the folder of the YAML file, so a config works from any working
directory. Unknown keys are errors (a typo must not silently fall back to a default).

>>> cfg = load_config("configs/default.yaml")  # doctest: +SKIP
>>> cfg.datasets[0].name, cfg.datasets[0].patch_size  # doctest: +SKIP
('ct_headneck_openkbp', (64, 64, 64))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from UniversalSegLib.errors import InputError

MODES = ("universal", "baseline")
FOLDER_SETTINGS = ("data_root", "cache_dir", "output_dir", "splits_dir", "init_from")
OPTIMIZERS = ("adamw", "lamb")
AFFINE_PROB = 0.3  # default patch affine: chance, scale factor bounds (below 1 zooms in), largest rotation
SCALE_RANGE = (0.85, 1.15)
ROTATE_DEG = 15.0


@dataclass
class DatasetSpec:
    """One training dataset.

    Attributes:
        path: folder holding ``dataset.json`` (shared format or nnU-Net raw layout); relative to
            ``data_root``.
        weight: relative sampling weight (the chance that a sample comes from this dataset is
            ``weight / sum(weights)``).
        spacing: (x, y, z) mm the cases are resampled to; ``None`` keeps the voxel grid as stored
            (required for data whose spacing is unknown, such as the ACDC export).
        patch_size: (x, y, z) voxels of a training patch, each a multiple of 16, one at least 32
            (instance norm needs two voxels at 1/16 scale).
        flip_axes: spatial axes ("x", "y", "z") that may be mirrored (p=0.5 each). Empty by default:
            a mirror swaps left/right or anterior/posterior structures that carry distinct labels.
        modality: catalog modality id overriding the catalog's dataset entry (optional).
        tasks: {label value: catalog task id} overriding the catalog's dataset entry (optional;
            needed for a dataset the catalog does not list).
        foreground_prob: chance that a patch is centred on a voxel of a present label.
        affine_prob: chance of the random rotation and scaling of a patch.
        scale_range: (low, high) scale factor bounds of that affine; below 1 zooms in. In-plane only
            for anisotropic patches (the through-plane axis keeps 0.85-1.15).
        rotate_deg: largest rotation of that affine in degrees (about the through-plane axis for
            anisotropic patches; 180 is any in-plane orientation).
        invert_prob: chance that a patch's intensities are negated (its contrast inverted), so that a
            structure is learnt by shape as well as by brightness: two of the 80 left-atrium scans have
            their blood pool darker than the wall around it, where the others have it brighter or level.
            0 (off) by default.
    """

    path: str
    weight: float = 1.0
    spacing: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] = (64, 64, 64)
    flip_axes: tuple[str, ...] = ()
    modality: str | None = None
    tasks: dict[int, str] | None = None
    foreground_prob: float = 0.5
    affine_prob: float = AFFINE_PROB
    scale_range: tuple[float, float] = SCALE_RANGE
    rotate_deg: float = ROTATE_DEG
    invert_prob: float = 0.0

    @property
    def name(self) -> str:
        """The dataset's folder name (its key in the catalog and in ``splits/``)."""
        return Path(self.path).name


@dataclass
class TrainConfig:
    """Everything a training run needs; see ``configs/default.yaml`` for a commented example.

    Attributes:
        datasets: the datasets (:class:`DatasetSpec`) trained together.
        data_root: folder the dataset paths are relative to (itself relative to the YAML file).
        preset: network size, "small" (CPU) or "paper" (Hermes-R).
        widths: optional override of the preset's five stage widths.
        fusion_blocks: optional override of the preset's five fusion depths.
        fused_kernels: task kernels from the fused task tokens (true, Hermes) or the unfused pool rows.
        init_from: optional checkpoint in our format (a run's ``best.pt`` / ``final.pt`` or an exported model) whose
            weights the network and its EMA start from; the optimiser, schedule and warm-up start
            fresh. Its tasks, modalities and architecture must match this run's. Ignored when the
            run resumes from its own ``last.pt``.
        blocks_per_stage: optional override of the preset's residual blocks per stage.
        iterations: optimiser steps in total. Baseline mode splits them over the datasets by sampling
            weight (and the warm-up likewise), so each baseline gets the steps the universal run of
            the same config spends on its dataset.
        batch_size: samples per optimiser step and process (gradients are accumulated over
            sub-batches of equal patch size).
        one_dataset_per_step: draw all samples of a step from one dataset (weighted choice per step), so
            the step is a single batched forward pass; on CPU a pair costs about what one sample alone
            does (see :mod:`UniversalSegLib.training.sampler`).
        lr: peak learning rate (reached after the warm-up).
        weight_decay: decoupled weight decay.
        optimizer: "adamw" or "lamb".
        warmup_iterations: linear warm-up length, from lr/100 to lr.
        poly_power: exponent of the polynomial decay to 0 after the warm-up.
        grad_clip: maximum global gradient norm (0 disables clipping).
        ema_decay: decay of the exponential moving average of the weights used for validation
            and export (0 disables EMA: the raw weights are used).
        val_every: run validation every this many iterations (and at the end).
        val_cases_per_dataset: validation cases per dataset (the first ones of its split).
        val_overlap: sliding-window overlap during validation.
        checkpoint_every: write ``last.pt`` every this many iterations (and at the end).
        cache_dir: folder of the preprocessing cache (normalised arrays per case).
        output_dir: folder of checkpoints, logs and plots.
        splits_dir: folder of the ``<dataset>.json`` train/validation splits (read if present,
            written otherwise).
        val_fraction: fraction of cases (or patients) held out for validation.
        seed: seed of every random choice (sampling, augmentation, initialisation).
        num_workers: data-loading worker processes (0 = in the training process).
        threads: torch CPU threads per process.
        mode: "universal" (one network, all datasets, task and modality priors) or "baseline"
            (one prior-free network per dataset; see :mod:`UniversalSegLib.training.trainer`).
        amp: mixed precision (bfloat16 autocast); used on CUDA only, ignored on CPU.
        device: "auto" (CUDA if available), "cpu" or "cuda".
        inference_spacing: spacing written as the checkpoint's default (requests mixing groups);
            default: the first dataset's spacing.
        inference_patch_size: sliding-window size written into the checkpoint; default: the first
            dataset's patch size.
        modality_loss_weight: weight of the modality cross-entropy.
        skip_empty_dice: leave a channel out of the Tversky term when its organ is annotated in the case
            but absent from the patch (BCE still applies), so the Dice term cannot drive a rarely seen
            organ's channel to zero. Off by default (only the bundled 0.7.0's last stage used it).
        generic_modality_prob: chance that a sample of a specific modality (e.g. MR-T1) is fed with
            the row of its generic catalog fallback (e.g. MR) instead, so that the exported model
            has a trained prior for sequences it never saw (inference falls back to it).
        augment: whether to augment training patches (off only for debugging and tests).
        log_every: CSV/TensorBoard logging interval in iterations.
    """

    datasets: list[DatasetSpec]
    data_root: str = "."
    preset: str = "small"
    widths: tuple[int, int, int, int, int] | None = None
    fusion_blocks: tuple[int, int, int, int, int] | None = None
    blocks_per_stage: int | None = None
    fused_kernels: bool = True
    init_from: str | None = None
    iterations: int = 4000
    batch_size: int = 2
    one_dataset_per_step: bool = False
    lr: float = 2e-3
    weight_decay: float = 1e-5
    optimizer: str = "lamb"
    warmup_iterations: int = 200
    poly_power: float = 0.9
    grad_clip: float = 12.0
    ema_decay: float = 0.99
    val_every: int = 500
    val_cases_per_dataset: int = 4
    val_overlap: float = 0.25
    checkpoint_every: int = 100
    cache_dir: str = "cache"
    output_dir: str = "runs/train"
    splits_dir: str = "splits"
    val_fraction: float = 0.2
    seed: int = 0
    num_workers: int = 0
    threads: int = 2
    mode: str = "universal"
    amp: bool = True
    device: str = "auto"
    inference_spacing: tuple[float, float, float] | None = None
    inference_patch_size: tuple[int, int, int] | None = None
    modality_loss_weight: float = 0.01
    skip_empty_dice: bool = False
    generic_modality_prob: float = 0.1
    augment: bool = True
    log_every: int = 10
    # Set by load_config: the folder relative paths resolve against.
    base_dir: str = field(default=".", repr=False)

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute against the YAML file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def dataset_folder(self, spec: DatasetSpec) -> Path:
        """Absolute folder of one dataset."""
        p = Path(spec.path).expanduser()
        return p if p.is_absolute() else (self.resolve(self.data_root) / p).resolve()

    @property
    def init_path(self) -> Path | None:
        return self.resolve(self.init_from) if self.init_from else None

    @property
    def output_path(self) -> Path:
        return self.resolve(self.output_dir)

    @property
    def cache_path(self) -> Path:
        return self.resolve(self.cache_dir)

    @property
    def splits_path(self) -> Path:
        return self.resolve(self.splits_dir)

    def to_dict(self) -> dict:
        """Plain dict (for logs and checkpoint metadata)."""
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        return _plain(d)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid setting."""
        _check(bool(self.datasets), "config has no datasets", "list at least one under 'datasets:'")
        names = [d.name for d in self.datasets]
        _check(len(set(names)) == len(names), f"dataset folders repeat: {names}", "list each dataset once")
        for d in self.datasets:
            _check(d.weight > 0, f"dataset {d.name}: weight {d.weight} must be > 0", "use e.g. 1.0")
            _check(len(d.patch_size) == 3 and all(int(s) > 0 and int(s) % 16 == 0 for s in d.patch_size)
                   and max(d.patch_size) >= 32,
                   f"dataset {d.name}: patch_size {list(d.patch_size)} must be 3 multiples of 16, one >= 32",
                   "use sizes such as [64, 64, 64] or [96, 96, 16]")
            _check(d.spacing is None or (len(d.spacing) == 3 and all(s > 0 for s in d.spacing)),
                   f"dataset {d.name}: spacing {d.spacing} must be null or 3 positive numbers (x, y, z mm)",
                   "use e.g. [1.0, 1.0, 1.0] or null")
            _check(all(a in ("x", "y", "z") for a in d.flip_axes),
                   f"dataset {d.name}: flip_axes {list(d.flip_axes)} may only hold 'x', 'y', 'z'",
                   "leave it empty unless mirrored anatomy keeps its labels")
            _check(0.0 <= d.foreground_prob <= 1.0, f"dataset {d.name}: foreground_prob must be in [0, 1]",
                   "use e.g. 0.5")
            _check(0.0 <= d.affine_prob <= 1.0, f"dataset {d.name}: affine_prob must be in [0, 1]", "use e.g. 0.3")
            _check(len(d.scale_range) == 2 and 0.0 < d.scale_range[0] <= 1.0 <= d.scale_range[1] <= 3.0,
                   f"dataset {d.name}: scale_range {list(d.scale_range)} must be [low, high] with 0 < low <= 1 "
                   "<= high <= 3", "use e.g. [0.85, 1.15]")
            _check(0.0 <= d.rotate_deg <= 180.0, f"dataset {d.name}: rotate_deg must be in [0, 180]",
                   "use e.g. 15")
            _check(0.0 <= d.invert_prob <= 1.0, f"dataset {d.name}: invert_prob must be in [0, 1]", "use e.g. 0.2")
        _check(self.mode in MODES, f"mode '{self.mode}' is unknown", f"use one of {', '.join(MODES)}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer '{self.optimizer}' is unknown",
               f"use one of {', '.join(OPTIMIZERS)}")
        _check(self.preset in ("small", "paper"), f"preset '{self.preset}' is unknown", "use small or paper")
        for name in ("iterations", "batch_size", "val_every", "checkpoint_every", "threads", "log_every",
                     "val_cases_per_dataset"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} = {value!r} must be an integer >= 1",
                   "give a positive whole number")
        _check(self.num_workers >= 0, "num_workers must be >= 0", "use 0 or more")
        _check(self.warmup_iterations >= 0, "warmup_iterations must be >= 0", "use 0 or more")
        _check(self.lr > 0, f"lr = {self.lr} must be > 0", "use e.g. 2e-3")
        _check(0.0 <= self.ema_decay < 1.0, f"ema_decay = {self.ema_decay} must be in [0, 1)", "use e.g. 0.99")
        _check(0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)", "use e.g. 0.2")
        _check(0.0 <= self.generic_modality_prob <= 1.0, "generic_modality_prob must be in [0, 1]",
               "use e.g. 0.1")
        _check(0.0 <= self.val_overlap < 1.0, "val_overlap must be in [0, 1)", "use e.g. 0.25")
        _check(self.device in ("auto", "cpu", "cuda"), f"device '{self.device}' is unknown",
               "use auto, cpu or cuda")
        _check(self.init_from is None or self.mode == "universal",
               "init_from works in universal mode only", "remove init_from, or set mode: universal")
        _check(isinstance(self.fused_kernels, bool), f"fused_kernels = {self.fused_kernels!r} must be true or false",
               "write true or false")
        for name in ("widths", "fusion_blocks"):
            value = getattr(self, name)
            _check(value is None or len(value) == 5, f"{name} must be null or 5 integers",
                   "give one value per stage (full, 1/2, 1/4, 1/8, 1/16)")


def _check(ok: bool, problem: str, hint: str) -> None:
    if not ok:
        raise InputError(f"training config: {problem}", hint)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tuple_or_none(value: Any, kind: type) -> tuple | None:
    return None if value is None else tuple(kind(v) for v in value)


def config_from_dict(raw: dict, base_dir: str | Path = ".") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a YAML-like dict; unknown keys raise :class:`InputError`."""
    if not isinstance(raw, dict):
        raise InputError("training config must be a mapping of settings", "see configs/default.yaml")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"base_dir"}
    unknown = sorted(set(raw) - known)
    _check(not unknown, f"unknown setting(s) {unknown}", f"check the spelling; known: {', '.join(sorted(known))}")
    _check("datasets" in raw, "'datasets' is missing", "list the datasets to train on")
    ds_known = {f.name for f in dataclasses.fields(DatasetSpec)}
    specs = []
    for i, item in enumerate(raw["datasets"] or []):
        if isinstance(item, str):
            item = {"path": item}
        _check(isinstance(item, dict) and "path" in item, f"datasets[{i}] has no 'path'",
               "give each dataset as {path: folder, weight: 1.0, ...}")
        bad = sorted(set(item) - ds_known)
        _check(not bad, f"datasets[{i}] ({item['path']}) has unknown setting(s) {bad}",
               f"known: {', '.join(sorted(ds_known))}")
        item = dict(item)
        item["spacing"] = _tuple_or_none(item.get("spacing"), float)
        if "patch_size" in item:
            item["patch_size"] = _tuple_or_none(item["patch_size"], int)
        item["flip_axes"] = tuple(str(a) for a in (item.get("flip_axes") or ()))
        if "scale_range" in item:
            item["scale_range"] = _tuple_or_none(item["scale_range"], float)
        if item.get("tasks") is not None:
            item["tasks"] = {int(k): str(v) for k, v in item["tasks"].items()}
        item["weight"] = float(item.get("weight", 1.0))
        specs.append(DatasetSpec(**item))
    values = dict(raw)
    values["datasets"] = specs
    for name, kind in (("widths", int), ("fusion_blocks", int), ("inference_spacing", float),
                       ("inference_patch_size", int)):
        if name in values:
            values[name] = _tuple_or_none(values[name], kind)
    for name in ("lr", "weight_decay", "poly_power", "grad_clip", "ema_decay", "val_fraction", "val_overlap",
                 "modality_loss_weight", "generic_modality_prob"):
        if name in values and values[name] is not None:
            values[name] = float(values[name])
    try:
        config = TrainConfig(**values, base_dir=str(Path(base_dir).resolve()))
    except TypeError as err:
        raise InputError(f"training config: {err}", "see configs/default.yaml") from None
    config.validate()
    return config


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML training config; ``overrides`` replace top-level settings (e.g. ``iterations=10``).

    A config may start with ``extends: OTHER.yaml`` (relative to its own folder): it then holds only
    the settings that differ from OTHER, as ``configs/baseline.yaml`` does from ``default.yaml``.
    Relative folders stay relative to the file that names them.
    """
    raw = _read_yaml(Path(path), seen=())
    _check("stages" not in raw, f"'{path}' is a multi-stage recipe, not a single config",
           "run it with 'universalseg train' (every stage in turn) or read it with load_recipe")
    for key in FOLDER_SETTINGS:  # absolute (links kept), so logs and manifests name folders alike
        if isinstance(raw.get(key), str):
            raw[key] = os.path.abspath(Path(path).parent / Path(raw[key]).expanduser())
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(raw, base_dir=Path(path).parent)


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The settings of ``path`` on top of those of the file it ``extends`` (recursively)."""
    import yaml

    if not path.is_file():
        raise InputError(f"training config '{path}' does not exist", "check the path")
    _check(path.resolve() not in seen, f"training config '{path}' extends itself (through {len(seen)} file(s))",
           "remove the loop of 'extends:' settings")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"training config '{path}' is not valid YAML ({err})", "fix the syntax") from None
    _check(isinstance(raw, dict) or raw is None, f"training config '{path}' must be a mapping of settings",
           "see configs/default.yaml")
    raw = dict(raw or {})
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base_path = path.parent / str(parent)
    base = _read_yaml(base_path, (*seen, path.resolve()))
    for key in FOLDER_SETTINGS:  # the base's folders are relative to the base's own file
        if isinstance(base.get(key), str):
            base[key] = os.path.abspath(base_path.parent / Path(base[key]).expanduser())
    base.update(raw)
    return base


# ------------------------------------------------------------------------------------------ recipes
PREVIOUS = "previous"
STAGE_SETTINGS = ("name", "resume_from")  # a stage's own settings beside those of a TrainConfig


@dataclass
class RecipeStage:
    """One stage of a :class:`Recipe`: a complete training config and how it starts.

    Attributes:
        name: the stage's name (unique in its recipe).
        config: the stage's :class:`TrainConfig`; ``init_from: previous`` in the file has become the
            previous stage's ``final.pt``.
        resume_from: the previous stage's ``last.pt`` when the stage continues that run (weights, EMA,
            optimiser, schedule position, random state) to its own, larger ``iterations``
            (``resume_from: previous``); None when it starts from ``init_from`` or from scratch.
    """

    name: str
    config: TrainConfig
    resume_from: Path | None = None


@dataclass
class Recipe:
    """A multi-stage training recipe: the stages, in order, that build one model.

    Attributes:
        name: the model the recipe builds (e.g. ``universalseg-small``).
        version: the version of that model it rebuilds (optional).
        stages: the :class:`RecipeStage` list, in training order.
        path: the recipe file.
    """

    name: str
    version: str | None
    stages: list[RecipeStage]
    path: Path

    def stage(self, key: str | int) -> RecipeStage:
        """The stage of this name, or of this 1-based number."""
        for number, stage in enumerate(self.stages, 1):
            if key in (stage.name, number, str(number)):
                return stage
        raise InputError(f"recipe {self.path.name} has no stage '{key}'",
                         f"use a number from 1 to {len(self.stages)} or one of: "
                         f"{', '.join(s.name for s in self.stages)}")


def is_recipe(path: str | Path) -> bool:
    """Whether the YAML file ``path`` is a multi-stage recipe (it has ``stages:``), not a single config."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "stages" in raw


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read a multi-stage recipe; ``overrides`` replace top-level settings of every stage (e.g. ``threads=1``).

    A recipe is ``name:`` (the model), optional ``version:`` and ``stages:``, a list of complete training
    configs (the settings of :class:`TrainConfig`, no ``extends``) with a ``name`` each. A stage after the
    first may start from the previous stage's result: ``init_from: previous`` (its ``final.pt``, the last
    step's EMA weights, with a fresh optimiser and schedule) or ``resume_from: previous`` (its ``last.pt``:
    that run continued to this stage's larger ``iterations``, the schedule stretched to them). Relative
    folders resolve against the recipe's folder, as in a config.

    >>> recipe = load_recipe("configs/universalseg-small.yaml")  # doctest: +SKIP
    >>> recipe.stages[2].config.init_path == recipe.stages[1].config.output_path / "final.pt"  # doctest: +SKIP
    True
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"training recipe '{path}' does not exist", "check the path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"training recipe '{path}' is not valid YAML ({err})", "fix the syntax") from None
    _check(isinstance(raw, dict) and isinstance(raw.get("stages"), list) and bool(raw["stages"]),
           f"training recipe '{path}' must be a mapping with a non-empty list under 'stages:'",
           "see configs/universalseg-small.yaml")
    unknown = sorted(set(raw) - {"name", "version", "stages"})
    _check(not unknown, f"recipe '{path.name}' has unknown top-level setting(s) {unknown}",
           "known: name, version, stages (each stage holds its own training settings)")
    stages: list[RecipeStage] = []
    for number, item in enumerate(raw["stages"], 1):
        where = f"recipe '{path.name}' stage {number}"
        _check(isinstance(item, dict) and isinstance(item.get("name"), str) and bool(item["name"]),
               f"{where} must be a mapping of settings with a 'name'", "give each stage a name: NAME")
        item = dict(item)
        name = str(item.pop("name"))
        _check(name not in [s.name for s in stages], f"{where}: the name '{name}' repeats", "name each stage once")
        _check("extends" not in item, f"{where} ({name}) uses 'extends'",
               "a recipe lists every setting of every stage; write them out")
        resume = item.pop("resume_from", None)
        init_previous = item.get("init_from") == PREVIOUS
        previous = stages[-1] if stages else None
        for key, value in (("init_from", item.get("init_from")), ("resume_from", resume)):
            if value == PREVIOUS:
                _check(previous is not None, f"{where} ({name}): {key}: previous in the first stage",
                       "the first stage starts from scratch or from a checkpoint file")
        _check(resume in (None, PREVIOUS), f"{where} ({name}): resume_from must be 'previous' (or absent)",
               "continue the previous stage's run, or use init_from for a checkpoint file")
        _check(resume is None or item.get("init_from") is None,
               f"{where} ({name}) has both init_from and resume_from", "keep one of them")
        for key in FOLDER_SETTINGS:
            if isinstance(item.get(key), str) and not (key == "init_from" and init_previous):
                item[key] = os.path.abspath(path.parent / Path(item[key]).expanduser())
        if init_previous and previous is not None:
            item["init_from"] = str(previous.config.output_path / "final.pt")
        item.update({k: v for k, v in overrides.items() if v is not None})
        try:
            config = config_from_dict(item, base_dir=path.parent)
        except InputError as err:
            raise InputError(f"{where} ({name}): {err.problem}", err.hint) from None
        resume_path = None
        if resume == PREVIOUS and previous is not None:
            _check(config.iterations > previous.config.iterations,
                   f"{where} ({name}) resumes '{previous.name}' but its iterations ({config.iterations}) are "
                   f"not more than that stage's ({previous.config.iterations})", "give it more iterations")
            resume_path = previous.config.output_path / "last.pt"
        _check(config.output_path not in [s.config.output_path for s in stages],
               f"{where} ({name}): output_dir {config.output_path} is another stage's too",
               "give every stage its own output_dir")
        stages.append(RecipeStage(name, config, resume_path))
    version = raw.get("version")
    return Recipe(str(raw.get("name") or path.stem), None if version is None else str(version), stages, path)


def run_folders(path: str | Path) -> list[Path]:
    """The output folders of a config (one) or of a recipe (one per stage)."""
    if is_recipe(path):
        return [stage.config.output_path for stage in load_recipe(path).stages]
    return [load_config(path).output_path]
