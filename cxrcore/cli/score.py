"""``cxr score``: a whole archive through one model into one table (cxrcore.score)."""
from __future__ import annotations

import json
import sys

from .common import CHECKPOINT_HELP, Command, bar


def cmd_score(a) -> int:
    from ..compare import model_name
    from ..errors import ConfigError
    from ..predictor import Predictor
    from ..score import score, source_of

    if a.workers < 1 or a.batch_size < 1:
        raise ConfigError("--workers and --batch-size must be at least 1.")
    source = source_of(a.input)
    predictor = Predictor(a.checkpoint)
    model = model_name(a.checkpoint, predictor)
    summary = score(source, predictor, a.out, model, workers=a.workers, batch=a.batch_size,
                    progress=None if a.json else bar("score"))
    if a.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(f"{summary.rows} images scored into {summary.out} (and {summary.csv}); {summary.errors} unreadable "
              f"(listed in {summary.errors_csv}); {summary.scored_now} this run, {summary.resumed} from before; "
              f"{summary.seconds:.1f} s", file=sys.stdout)
    return 0


def _flags(s) -> None:
    s.add_argument("input", help="a folder of images, a CSV with a path column, or a DICOMweb query URL "
                                 "(.../studies?ModalitiesInStudy=CR&StudyDate=20240101-20240131)")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--out", required=True, metavar="OUT.parquet",
                   help="the table (Parquet; OUT.csv and OUT.errors.csv beside it). The same command after a kill "
                        "continues where it stopped")
    s.add_argument("--json", action="store_true", help="print a summary: rows, errors, seconds, ...")
    s.add_argument("--workers", type=int, default=2, help="threads decoding images while the model scores")
    s.add_argument("--batch-size", type=int, default=32)
    s.set_defaults(func=cmd_score)


SCORE = Command("score", "score a whole archive (folder, CSV list or DICOMweb query) into one Parquet / CSV table, "
                         "resumably", _flags)
