"""The ``cxr`` command. Errors a user can cause print one message and exit with status 2.

Each command lives in a module of this package that declares it (a :class:`~cxrcore.cli.common.Command`: name,
help, and the function adding its options); :func:`build_parser` registers them in the order ``cxr --help``
lists them. A command's options are added when it is used, so a light command imports nothing heavy.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import CXRError
from . import (data, demo, eval, explain, jobs, lens, models, monitor, pacs, predict, prior, reader_study, score, serve,
               site, sweep, train)
from .common import CHECKPOINT_HELP, LIBRARY_HINT, CommandParser

COMMANDS = (data.PHANTOM, train.TRAIN, sweep.SWEEP, predict.PREDICT, eval.LOCALIZE, explain.EXPLAIN, data.STATS,
            data.CACHE, models.COMBINE, models.ZEROSHOT, demo.DEMO, jobs.JOBS, eval.EVAL, reader_study.READER_STUDY,
            score.SCORE, pacs.PACS, site.SITE, monitor.MONITOR, lens.INDEX, lens.SIMILAR, lens.LABEL_ISSUES,
            lens.DUPLICATES, prior.PRIOR, prior.EVAL_CHANGE, serve.SERVE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classifiers: data, training, explanation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["CHECKPOINT_HELP", "COMMANDS", "LIBRARY_HINT", "build_parser", "main"]
