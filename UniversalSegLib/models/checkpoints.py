"""Checkpoint I/O: our self-describing format, plus the original Hermes training checkpoints.

Our format is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "universalseg-hermes", "format_version": 1, "config": HermesConfig.to_dict(),
     "catalog_version": str, "task_ids": [...], "modality_ids": [...], "inference": {...},
     "metadata": {...}, "package_version": str, "state_dict": {...}}

``task_ids[i]`` is the catalog id of task pool row ``i``. The original Hermes files
(``{"epoch", "model_state_dict", "ema_model_state_dict", "optimizer_state_dict"}``) carry no
config and no ids: the config is inferred from tensor shapes and the ids come from the caller.

>>> import tempfile, pathlib
>>> from UniversalSegLib.models import HermesConfig, HermesNet
>>> net = HermesNet(HermesConfig(2, 1, widths=(8, 8, 32, 32, 32), fusion_blocks=(1, 0, 0, 0, 1)))
>>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.pt"
>>> save_checkpoint(path, net, task_ids=["liver", "spleen"], modality_ids=["CT"], catalog_version="1")
>>> loaded = load_checkpoint(path)
>>> loaded.task_ids, loaded.source_format
(['liver', 'spleen'], 'universalseg')
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import UniversalSegLib
from UniversalSegLib.errors import CheckpointError, OutputError
from UniversalSegLib.models.config import HermesConfig
from UniversalSegLib.models.hermes import HermesNet

FORMAT = "universalseg-hermes"
FORMAT_VERSION = 1
#: Modality pool rows of the released Hermes models (an assumption: the original files do not store them).
HERMES_MODALITIES = ["CT", "PET", "MR-T1", "MR-T2", "cine-MR", "MR"]
_UNREADABLE_HINT = "check that the download is complete and the file is a .pt/.pth checkpoint"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile
_FUSION_POINTS = ("prior_init_fuse_2", "prior_init_fuse_3", "prior_init_fuse_4",
                  "prior_fuse_5", "prior_fuse_6")


@dataclass
class LoadedModel:
    """A network ready for inference plus what it needs to map pool rows to catalog ids."""

    model: HermesNet
    task_ids: list[str]
    modality_ids: list[str]
    catalog_version: str | None
    inference: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    source_format: str = "universalseg"  # or "hermes-original"


def save_checkpoint(path: str | os.PathLike, model: HermesNet, *, task_ids: list[str],
                    modality_ids: list[str], catalog_version: str, inference: dict | None = None,
                    metadata: dict | None = None) -> None:
    """Write ``model`` in our format, atomically (temp file in the same folder, then ``os.replace``).

    ``inference`` and ``metadata`` must hold only plain values (str, numbers, bools, None, lists, dicts).
    """
    cfg = model.config
    _check_ids("task_ids", task_ids, cfg.num_tasks)
    _check_ids("modality_ids", modality_ids, cfg.num_modalities)
    inference, metadata = dict(inference or {}), dict(metadata or {})
    _check_plain(inference, "inference")
    _check_plain(metadata, "metadata")
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
        "catalog_version": str(catalog_version), "task_ids": list(task_ids),
        "modality_ids": list(modality_ids),
        "inference": inference, "metadata": metadata, "package_version": UniversalSegLib.__version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"cannot write checkpoint {path}: {err.strerror or err}",
                          "check that the folder exists, is writable and has free space") from err


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", *, task_ids: list[str] | None = None,
                    modality_ids: list[str] | None = None) -> LoadedModel:
    """Load our format or an original Hermes-R checkpoint; the model comes back in ``eval()`` mode.

    ``task_ids`` / ``modality_ids`` name the pool rows (one id per row); they are needed for original
    files, which store no ids (defaults: ``hermes_task_<i>``, and :data:`HERMES_MODALITIES` for a
    6-row modality pool). For our format they replace the stored ids.
    """
    path = Path(path)
    ckpt = _read(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict",
                              "give a file written by save_checkpoint or by the Hermes training code")
    if ckpt.get("format") == FORMAT:
        loaded = _from_ours(path, ckpt)
    elif "model_state_dict" in ckpt or "ema_model_state_dict" in ckpt:
        loaded = _from_original(path, ckpt)
    else:
        raise CheckpointError(
            f"{path} is neither a UniversalSeg checkpoint (expected 'format': '{FORMAT}' with 'config' "
            f"and 'state_dict') nor an original Hermes one (expected 'model_state_dict' or "
            f"'ema_model_state_dict'); it has keys {sorted(map(str, ckpt))[:8]}",
            "give a file written by save_checkpoint or by the Hermes training code")
    cfg = loaded.model.config
    if task_ids is not None:
        _check_ids("task_ids", task_ids, cfg.num_tasks)
        loaded.task_ids = list(task_ids)
    if modality_ids is not None:
        _check_ids("modality_ids", modality_ids, cfg.num_modalities)
        loaded.modality_ids = list(modality_ids)
    loaded.model.to(device).eval()
    return loaded


def _read(path: Path) -> Any:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}", "check the path, or download the model first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needed = re.search(r"GLOBAL (\S+)", str(err))
        if needed:
            raise CheckpointError(
                f"{path} contains pickled Python objects ({needed.group(1)}) that safe loading refuses",
                "re-save it from trusted code as a plain dict of tensors (e.g. model.state_dict())") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint",
                              _UNREADABLE_HINT) from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})",
                              _UNREADABLE_HINT) from None


def _from_ours(path: Path, ckpt: dict) -> LoadedModel:
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this UniversalSeg reads "
                              f"up to {FORMAT_VERSION}", "upgrade UniversalSeg")
    missing = [k for k in ("config", "state_dict", "task_ids", "modality_ids") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}", "re-save the model with save_checkpoint")
    cfg = HermesConfig.from_dict(ckpt["config"])
    _check_ids("stored task_ids", ckpt["task_ids"], cfg.num_tasks, "re-save the model with save_checkpoint")
    _check_ids("stored modality_ids", ckpt["modality_ids"], cfg.num_modalities,
               "re-save the model with save_checkpoint")
    model = _build(cfg, ckpt["state_dict"], path)
    return LoadedModel(model, list(ckpt["task_ids"]), list(ckpt["modality_ids"]), ckpt.get("catalog_version"),
                       dict(ckpt.get("inference") or {}), dict(ckpt.get("metadata") or {}), "universalseg")


def _from_original(path: Path, ckpt: dict) -> LoadedModel:
    ema = ckpt.get("ema_model_state_dict")
    use_ema = isinstance(ema, dict) and bool(ema)
    state = ema if use_ema else ckpt.get("model_state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} has no usable 'ema_model_state_dict' or 'model_state_dict'",
                              "give the checkpoint saved by the Hermes training code")
    state = _strip_prefixes(state, path)
    cfg = _infer_config(state, path)
    model = _build(cfg, state, path)
    modality_ids = (list(HERMES_MODALITIES) if cfg.num_modalities == len(HERMES_MODALITIES)
                    else [f"modality_{i}" for i in range(cfg.num_modalities)])
    metadata = {"epoch": ckpt.get("epoch"), "weights": "ema" if use_ema else "model"}
    return LoadedModel(model, [f"hermes_task_{i}" for i in range(cfg.num_tasks)], modality_ids, None, {},
                       metadata, "hermes-original")


def _strip_prefixes(state: dict, path: Path) -> dict:
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise CheckpointError(f"{path} has two tensors named {name!r} once wrapper prefixes are removed",
                                  "save the state dict of a single (unwrapped) model")
        out[name] = value
    return out


def _infer_config(state: dict, path: Path) -> HermesConfig:
    """Rebuild the Hermes-R config from tensor shapes (head_dim is not stored: the original uses 32)."""

    def shape(name: str, ndim: int) -> tuple[int, ...]:
        value = state.get(name)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path} lacks tensor {name!r}, so it is not a Hermes-R checkpoint",
                                  "only the ResUNet variant of Hermes can be loaded; check the file")
        if value.dim() != ndim:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(value.shape)}, expected {ndim} "
                                  "dimensions", "check that the file is a Hermes-R checkpoint")
        return tuple(value.shape)

    task_rows, w2 = shape("prior_init_fuse_2.task_prior", 2)
    num_modalities, modality_tokens, _ = shape("prior_init_fuse_2.modality_prior", 3)
    w0, in_channels = shape("inc.conv1.weight", 5)[:2]
    widths = (w0, shape("down1.conv.1.conv1.conv.weight", 5)[0], w2,
              shape("prior_init_fuse_3.task_prior", 2)[1], shape("prior_init_fuse_4.task_prior", 2)[1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"down1\.conv\.(\d+)\.conv1\.", k))}
    fusion_blocks = tuple(
        len({int(m.group(1)) for k in state if (m := re.match(rf"{p}\.attn_layers\.(\d+)\.", k))})
        for p in _FUSION_POINTS)
    fc1 = f"{_FUSION_POINTS[0]}.attn_layers.0.prior_ffn.fn.fc1.weight"
    mlp_ratio = shape(fc1, 2)[0] // w2 if fc1 in state else 4
    try:
        return HermesConfig(task_rows - 1, num_modalities, widths, len(blocks), fusion_blocks, 32, mlp_ratio,
                            modality_tokens, in_channels)
    except ValueError as err:
        raise CheckpointError(f"{path} has tensor shapes that fit no Hermes network: {err}",
                              "check that the file is a Hermes-R checkpoint") from err


def _build(cfg: HermesConfig, state: Any, path: Path) -> HermesNet:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has a state dict of type {type(state).__name__}", "re-save the model")
    model = HermesNet(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing (first: {missing[:5]})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (first: {unexpected[:5]})"] if unexpected else [])
        raise CheckpointError(f"{path} does not fit the network it describes: tensors {'; '.join(parts)}",
                              "check that the file is a complete Hermes checkpoint of a supported version")
    for name, tensor in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor",
                                  "re-save the model")
        if value.shape != tensor.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(value.shape)} but the network "
                                  f"needs {list(tensor.shape)}", "check that the file matches this network")
    model.load_state_dict(state, strict=True)
    return model


def _check_ids(name: str, ids: Any, rows: int, hint: str = "") -> None:
    hint = hint or f"pass exactly {rows} ids, one per pool row, in row order"
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
        raise CheckpointError(f"{name} must be a list of strings", hint)
    if len(ids) != rows:
        raise CheckpointError(f"{len(ids)} {name} given for a pool of {rows} rows", hint)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} has a non-string key {k!r}", "use string keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise CheckpointError(f"{where} is a {type(value).__name__}, which a checkpoint cannot store safely",
                              "store only strings, numbers, booleans, None, lists and dicts")
