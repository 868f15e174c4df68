"""``cxr score``: a whole archive through one model into one table (cxrcore.score)."""
from __future__ import annotations

import json
import os
import sys

from ..runtime import RUNTIMES
from .common import CHECKPOINT_HELP, Command, add_backend_flag, add_slurm_flags, bar, slurm_values, use_site


def _submit(a) -> int:
    """``--background`` / ``--backend slurm``: the same scoring as a job of the queue (cxrcore.jobs.scoring)."""
    from ..jobs import dispatch
    from ..jobs.scoring import SCORE, TASK_KEY

    config = {TASK_KEY: SCORE, "input": a.input, "checkpoint": a.checkpoint, "out": a.out, "workers": a.workers,
              "batch_size": a.batch_size, "runtime": a.runtime, "threads": a.threads, "shards": a.shards,
              "site": a.site or ""}
    if a.backend == "slurm":
        config["slurm"] = slurm_values(a)
        job = dispatch.submit(config, name=a.name or "", backend="slurm", cluster=a.slurm_conf)
    else:
        job = dispatch.submit(config, name=a.name or "")   # recorded as launched by the OS user
    if a.json:
        print(json.dumps({"job": job.id, "backend": job.backend, "backend_id": job.backend_id,
                          "run_dir": job.run_dir, "out": a.out}, indent=1))
    else:
        print(f"submitted scoring job {job.id} on {job.backend} (run folder {job.run_dir}); watch it with "
              f"`cxr jobs show {job.id}`; `cxr jobs resume {job.id}` continues it after a cancel or a kill")
    return 0


def cmd_score(a) -> int:
    from ..compare import model_name
    from ..errors import ConfigError
    from ..predictor import Predictor
    from ..runtime import scorer
    from ..score import score, source_of

    if a.workers < 1 or a.batch_size < 1 or a.threads < 0 or a.shards < 1:
        raise ConfigError("--workers, --batch-size and --shards must be at least 1, --threads at least 0.")
    if a.shards > 1 and a.backend != "slurm":
        raise ConfigError("--shards splits the archive over a Slurm array job: add --backend slurm.")
    if not a.threads:
        a.threads = 0 if (a.background or a.backend != "local") else (os.cpu_count() or 1)
    if a.background or a.backend != "local":
        if a.dicom_sr:
            raise ConfigError("--dicom-sr writes reports in the foreground run; as a job, `cxr pacs watch` stores "
                              "reports into the PACS.")
        return _submit(a)
    source = source_of(a.input)
    predictor = Predictor(a.checkpoint)
    use_site(predictor, a.checkpoint, a.site)   # --site: the profile's thresholds and temperatures
    model = model_name(a.checkpoint, predictor)
    network, runtime, why_not = scorer(predictor, a.runtime, a.threads)
    if why_not and not a.json:
        print(f"scoring with PyTorch: {why_not}", file=sys.stderr)
    shown = None if a.json else bar("score")
    summary = score(source, network, a.out, model, workers=a.workers, batch=a.batch_size,
                    progress=None if shown is None else lambda done, todo, errors: shown(done, todo),
                    dicom_sr=a.dicom_sr)
    summary.runtime_note = why_not
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
    s.add_argument("--site", default=None, metavar="S",
                   help="the model as used at site S: its site profile's thresholds and temperatures (cxr site fit); "
                        "the table's site column names it")
    s.add_argument("--out", required=True, metavar="OUT.parquet",
                   help="the table (Parquet; OUT.csv and OUT.errors.csv beside it). The same command after a kill "
                        "continues where it stopped")
    s.add_argument("--json", action="store_true", help="print a summary: rows, errors, seconds, ...")
    s.add_argument("--dicom-sr", metavar="DIR", default=None,
                   help="also write, for every DICOM image, a DICOM Structured Report of its row (probabilities, "
                        "thresholds, calls; no heatmap boxes) into DIR, named by the image's SOP Instance UID")
    s.add_argument("--workers", type=int, default=2, help="threads decoding images while the model scores")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--runtime", choices=RUNTIMES, default=RUNTIMES[0],
                   help="what runs the network: onnx (the model exported once to ONNX Runtime; equal to PyTorch within "
                        "1e-4, faster on CPUs: bench/RESULTS.md) or torch (PyTorch eager). A model that does not "
                        "export is scored by PyTorch, and the summary says why")
    s.add_argument("--threads", type=int, default=0,
                   help="math threads for the network (default: every core here; a job: all but one)")
    add_backend_flag(s, help="local: here (in the foreground, or as a detached job with --background); slurm: a job "
                             "submitted with sbatch")
    add_slurm_flags(s, visitor_safe=False)
    s.add_argument("--background", action="store_true",
                   help="run as a detached job of the queue (see `cxr jobs`; the Training page lists it)")
    s.add_argument("--name", default="", help="the job's name (with --background or --backend slurm)")
    s.add_argument("--shards", type=int, default=1,
                   help="with --backend slurm: split the archive into this many shards, one Slurm array task each; "
                        "the last task to end merges their tables into OUT")
    s.set_defaults(func=cmd_score)


SCORE = Command("score", "score a whole archive (folder, CSV list or DICOMweb query) into one Parquet / CSV table, "
                         "resumably", _flags)
