"""``python -m UniversalSegLib.training CONFIG.yaml [...]`` (also under ``torchrun``): see :func:`main`.

CONFIG is one training config (handed to :func:`~UniversalSegLib.training.trainer.main_train`) or a
multi-stage recipe such as ``configs/universalseg-small.yaml`` (see
:func:`~UniversalSegLib.training.config.load_recipe`), whose stages :func:`run_recipe` trains in turn.

OpenMP threads are told to sleep rather than spin while waiting (``OMP_WAIT_POLICY=PASSIVE``) unless
the environment says otherwise: on a CPU shared with other jobs, spinning threads made 2-thread
training steps about twice slower in our measurements. It must be set before torch loads.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from UniversalSegLib.errors import InputError, UniversalSegError  # noqa: E402
from UniversalSegLib.training.config import Recipe, RecipeStage, is_recipe, load_recipe  # noqa: E402

log = logging.getLogger("UniversalSeg.training")


def stage_finished(stage: RecipeStage) -> bool:
    """Whether ``stage`` ran all its steps: its ``final.pt`` is written and its ``last.pt`` is at the end."""
    import torch

    out = stage.config.output_path
    if not (out / "final.pt").is_file() or not (out / "last.pt").is_file():
        return False
    try:
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    except Exception:  # unreadable: let the trainer say so
        return False
    return isinstance(state, dict) and int(state.get("iteration", -1)) >= stage.config.iterations


def _take_over(source: Path, stage: RecipeStage) -> None:
    """Copy the previous stage's ``last.pt`` into ``stage``'s folder, where the trainer resumes from it."""
    if not source.is_file():
        raise InputError(f"stage '{stage.name}' continues the previous stage's run, but {source} does not exist",
                         "run the previous stage first (rerun the recipe without --stages)")
    out = stage.config.output_path
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".last.pt.{os.getpid()}.tmp"  # each process its own copy: under torchrun all ranks do this
    shutil.copyfile(source, tmp)
    for name in ("best.pt", "final.pt"):  # an earlier attempt's; this run writes its own
        (out / name).unlink(missing_ok=True)
    os.replace(tmp, out / "last.pt")
    log.info("stage %s continues %s", stage.name, source)


def run_recipe(recipe: Recipe, progress: bool = True, *, resume: bool = True,
               stages: Sequence[RecipeStage] | None = None, catalog: Any = None, train: Any = None) -> list[Path]:
    """Train the stages of ``recipe`` (or just ``stages`` of it) in order; return each stage's ``final.pt``.

    Each stage starts as its recipe entry says: from scratch, from the previous stage's ``final.pt``
    (``init_from: previous``) or continuing the previous stage's run from its ``last.pt``
    (``resume_from: previous``). ``resume``: a finished stage is skipped and an interrupted one resumes
    from its own ``last.pt``, as a rerun of a single config does; False trains every stage over.
    ``train``: the training function (default :func:`~UniversalSegLib.training.trainer.train`).
    """
    if train is None:
        from UniversalSegLib.training.trainer import train
    finals = []
    selected = list(recipe.stages if stages is None else stages)
    for stage in selected:
        number = recipe.stages.index(stage) + 1
        out = stage.config.output_path
        if resume and stage_finished(stage):
            log.info("stage %d/%d %s: finished, skipped (%s)", number, len(recipe.stages), stage.name, out)
            finals.append(out / "final.pt")
            continue
        log.info("stage %d/%d %s: %d iterations -> %s", number, len(recipe.stages), stage.name,
                 stage.config.iterations, out)
        stage_resume = resume
        if stage.resume_from is not None:
            if not resume or not (out / "last.pt").is_file():
                _take_over(stage.resume_from, stage)
            stage_resume = True  # the stage is that run, continued
        train(stage.config, progress=progress, resume=stage_resume, catalog=catalog)
        finals.append(out / "final.pt")
    return finals


def _stage_range(recipe: Recipe, text: str) -> list[RecipeStage]:
    """``--stages``: ``N``, ``A-B`` (1-based, inclusive) or a stage name."""
    if "-" in text and all(part.isdigit() for part in text.split("-", 1)):
        first, last = (recipe.stages.index(recipe.stage(part)) for part in text.split("-", 1))
        if first > last:
            raise InputError(f"--stages {text}: the first stage comes after the last", "write e.g. 1-2")
        return recipe.stages[first:last + 1]
    return [recipe.stage(text)]


def main(argv: Sequence[str] | None = None) -> int:
    """``universalseg train CONFIG_OR_RECIPE.yaml [...]``; returns the exit code.

    A single config goes to :func:`~UniversalSegLib.training.trainer.main_train` unchanged. A recipe
    trains its stages in turn (``--stages N|A-B|NAME`` for some of them; ``--resume/--no-resume`` and
    ``--threads`` as for a config, ``--quiet``) and prints the last trained stage's ``final.pt``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = next((a for a in argv if not a.startswith("-")), None)
    if config is None or not is_recipe(config):
        from UniversalSegLib.training.trainer import main_train

        return main_train(argv)
    parser = argparse.ArgumentParser(prog="universalseg train", description="Train every stage of a recipe.")
    parser.add_argument("config", help="multi-stage recipe YAML (e.g. configs/universalseg-small.yaml)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip finished stages, resume an interrupted one from its last.pt (default: yes)")
    parser.add_argument("--stages", metavar="N|A-B|NAME", help="train only these stages (1-based, inclusive)")
    parser.add_argument("--threads", type=int, help="override every stage's torch CPU threads per process")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        recipe = load_recipe(args.config, threads=args.threads)
        stages = _stage_range(recipe, args.stages) if args.stages else None
        finals = run_recipe(recipe, progress=not args.quiet, resume=args.resume, stages=stages)
    except UniversalSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0 and finals:
        print(finals[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
