"""Export a trained checkpoint as a shippable model: weights without machine paths, plus a manifest.

The manifest (``<name>.json`` beside the weights) records what a user or reviewer needs to trust
the file: version, SHA-256, training data with split files, case counts and licences, the usage
the licences allow, model and training configuration, iterations, training time, and validation
Dice per label. A run that started from another checkpoint (``init_from``) is recorded with the
chain of runs before it (``training.earlier_stages``, oldest first) and the totals over all of them.

>>> manifest = export_model("runs/default/best.pt", "UniversalSegLib/weights/universalseg-small.pt")  # doctest: +SKIP
>>> manifest["sha256"][:8]  # doctest: +SKIP
'3f0c9a1e'
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from .. import REQUIRES_FIELD, __version__
from ..catalog import Catalog
from ..errors import CheckpointError
from ..policy import POLICY_KEY, build_policy, validate_policy
from ..volume import file_sha256

NON_COMMERCIAL_HINTS = ("non-commercial", "noncommercial", "research use", "research, non-commercial", "nc-")


def requires_spec(version: str = __version__) -> str:
    """The package versions an export of ``version`` works with: the same major release from its minor on.

    >>> requires_spec("0.9.0"), requires_spec("1.2.3")
    ('>=0.9,<1.0', '>=1.2,<2.0')
    """
    major, minor = ([int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")] + [0, 0])[:2]
    return f">={major}.{minor},<{major + 1}.0"


def _relative(value: object, root: Path | None = None) -> object:
    """Paths of this machine inside metadata become relative to ``root`` (default: the working directory, which
    relative paths such as :mod:`UniversalSegLib.paths`' defaults are read from), or just a file name.

    Paths beside ``root`` (``../shared/data``) keep their ``../`` form; others keep only their name.
    """
    root = Path(os.path.normpath(root if root is not None else Path.cwd()))
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(os.path.normpath(value))  # not resolve(): a linked ../shared stays ../shared
        if path.is_relative_to(root):
            return str(path.relative_to(root))
        if path.is_relative_to(root.parent):
            return str(Path("..") / path.relative_to(root.parent))
        return path.name
    return value


def _earlier_stages(metadata: dict, limit: int = 20, root: Path | None = None) -> list[dict]:
    """The runs a checkpoint's run started from (``config.init_from``, followed back), oldest first.

    An exported model that a run started from brings its own history: the ``earlier_stages`` it carries,
    else those of the manifest beside it (when the manifest's SHA-256 is that file's).
    """
    import torch

    stages: list[dict] = []
    source = (metadata.get("config") or {}).get("init_from")
    while source and len(stages) < limit:
        stage: dict = {"checkpoint": _relative(source, root)}
        try:
            earlier = torch.load(source, map_location="cpu", weights_only=True).get("metadata", {})
        except (OSError, RuntimeError, AttributeError):
            stages.append({**stage, "found": False})
            break
        weights = {Path(d["path"]).name: d.get("weight") for d in (earlier.get("config") or {}).get("datasets", [])}
        digest = file_sha256(source)
        manifest = _manifest_of(Path(source), digest)
        if manifest.get("version"):
            stage["version"] = manifest["version"]
        stages.append({**stage, "sha256": digest, "iterations": earlier.get("iterations"),
                       "seconds": earlier.get("training_seconds"), "dataset_weights": weights,
                       "date": earlier.get("date")})
        recorded = earlier.get("earlier_stages", (manifest.get("training") or {}).get("earlier_stages"))
        if recorded is not None:
            stages.extend(reversed(recorded))
            break
        source = (earlier.get("config") or {}).get("init_from")
    return stages[::-1]


def _manifest_of(path: Path, digest: str) -> dict:
    """The manifest beside an exported model ``path`` if it describes that very file, else ``{}``."""
    try:
        manifest = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("sha256") == digest else {}


def usage_terms(licences: dict[str, str]) -> str:
    """"research use only" when any training set's licence restricts use, else "see licences"."""
    restricted = sorted(name for name, text in licences.items() if any(h in text.lower() for h in NON_COMMERCIAL_HINTS))
    if restricted:
        return ("research use only, non-commercial: trained on data whose licences restrict use "
                f"({', '.join(restricted)})")
    return "as permitted by the licences of the training data listed here"


def export_model(checkpoint: str | Path, output: str | Path, version: str = __version__,
                 evaluation: dict | None = None, overwrite: bool = False, inputs: tuple = (), *,
                 policy: dict[str, dict] | None = None, root: str | Path | None = None,
                 requires: str | None = None, catalog: Catalog | None = None) -> dict:
    """Copy ``checkpoint`` (our format) to ``output`` without machine paths; write ``output``'s manifest.

    Neither ``output`` nor its manifest may be ``checkpoint`` or one of ``inputs`` (e.g. the evaluation
    reports); existing files are replaced only with ``overwrite``.

    ``evaluation`` (name -> report of :func:`~UniversalSegLib.training.evaluate.evaluate_dataset`)
    adds full validation-split figures to the manifest; a report with a ``refinement`` entry gives the
    refined Dice. The manifest's ``inference_policy`` block (:mod:`UniversalSegLib.policy`) holds the
    catalog's policy per task, changed by ``policy`` (task id -> fields, e.g. ``{"esophagus":
    {"keep_largest": True}}``), with those figures (else the validation during training). Paths in the
    metadata become relative to ``root`` (default: the working directory). ``requires``: the package
    versions the model works with (default :func:`requires_spec` of this version).
    """
    import torch

    from ..safe_write import atomic_output, check_outputs

    root = Path(root) if root is not None else None

    output = Path(output)
    inputs = (checkpoint, *inputs)
    check_outputs([output, output.with_suffix(".json")], inputs, overwrite)
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read checkpoint '{checkpoint}' ({err})",
                              "give the best.pt or final.pt of a training run") from None
    if not isinstance(payload, dict) or payload.get("format") != "universalseg-hermes":
        raise CheckpointError(f"'{checkpoint}' is not in UniversalSeg's checkpoint format",
                              "export the best.pt or final.pt a training run wrote")
    stages = _earlier_stages(payload.get("metadata", {}), root=root)
    metadata = _relative(payload.get("metadata", {}), root)
    metadata["earlier_stages"] = stages  # so that a run starting from the exported model keeps its history
    payload["metadata"] = metadata
    figures = {"task_ids": payload.get("task_ids"), "validation": evaluation or {},
               "validation_during_training": {"dice_per_label": metadata.get("val_dice_per_label")}}
    block = build_policy(figures, catalog or Catalog.load(), policy)
    validate_policy(block, payload.get("task_ids"), f"the inference policy for {output}")  # before writing
    output = Path(output)
    with atomic_output(output, overwrite, inputs) as tmp:
        torch.save(payload, tmp)
    digest = file_sha256(output)
    licences = metadata.get("licenses", {})
    manifest = {
        "name": output.stem,
        "version": version,
        REQUIRES_FIELD: requires or requires_spec(__version__),
        "file": output.name,
        "sha256": digest,
        "bytes": output.stat().st_size,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "trained": metadata.get("date"),
        "usage": usage_terms(licences),
        "catalog_version": payload.get("catalog_version"),
        "task_ids": payload.get("task_ids"),
        "modality_ids": payload.get("modality_ids"),
        "model_config": payload.get("config"),
        "parameters": int(sum(t.numel() for t in payload["state_dict"].values())),
        "inference": payload.get("inference"),
        POLICY_KEY: block,
        "training": {
            "datasets": metadata.get("datasets"),
            "licences": licences,
            "iterations": metadata.get("iterations"),
            "seconds": metadata.get("training_seconds"),
            "weights": metadata.get("weights"),
            "config": metadata.get("config"),
            "earlier_stages": stages,
            "iterations_total": sum(st.get("iterations") or 0 for st in stages) + (metadata.get("iterations") or 0),
            "seconds_total": round(sum(st.get("seconds") or 0 for st in stages)
                                   + (metadata.get("training_seconds") or 0), 1),
        },
        "validation_during_training": {
            "dice_per_label": metadata.get("val_dice_per_label"),
            "mean_dice": metadata.get("val_mean_dice"),
        },
        "validation": evaluation or {},
    }
    with atomic_output(output.with_suffix(".json"), overwrite, inputs) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
