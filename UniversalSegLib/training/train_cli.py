"""``universalseg train`` (and ``python -m UniversalSegLib.training``, also under torchrun): arguments and exit code.

    universalseg train CONFIG.yaml [--resume | --no-resume] [--iterations N] [--threads N] [--stop-after N]

>>> build_train_parser().parse_args(["run.yaml", "--no-resume"]).resume
False
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from UniversalSegLib.errors import UniversalSegError
from UniversalSegLib.training.config import load_config


def build_train_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``universalseg train`` (added to ``parser`` when given, e.g. a sub-command parser)."""
    parser = parser or argparse.ArgumentParser(prog="universalseg train", description="Train a Hermes model.")
    parser.add_argument("config", help="training config YAML (see configs/default.yaml)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUTPUT_DIR/last.pt when present (default: yes)")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--threads", type=int, help="override the config's torch CPU threads per process")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="leave after iteration N (last.pt written); rerun to continue")
    parser.add_argument("--only", nargs="+", metavar="DATASET",
                        help="baseline mode: train only these datasets' baselines (to run several at once)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main_train(argv: Sequence[str] | None = None) -> int:
    """``universalseg train CONFIG.yaml [--resume/--no-resume] [--iterations N] [--threads N] [--stop-after N]``.

    Returns the exit code.

    Prints the best checkpoint's path; a :class:`UniversalSegError` prints ``error: ...`` and gives 2.
    """
    from UniversalSegLib.training.trainer import train  # trainer imports this module

    args = build_train_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = load_config(args.config, iterations=args.iterations, threads=args.threads)
        best = train(config, progress=not args.quiet, resume=args.resume, stop_after=args.stop_after,
                     only=args.only)
    except UniversalSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(best)
    return 0
