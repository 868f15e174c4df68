"""``cxr index``, ``cxr similar`` and ``cxr label-issues``: a dataset's images embedded by a model into a
nearest-neighbour index, the images of it nearest to a new one (cxrcore.lens.index), and its likely label errors
(cxrcore.lens.issues; issue 24)."""
from __future__ import annotations

import json

from .common import CHECKPOINT_HELP, Command, bar


def _index(a) -> int:
    from ..lens.index import build_index

    _, summary = build_index(a.checkpoint, a.data, a.out, batch=a.batch_size,
                             progress=None if a.json else bar("embed"))
    if a.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['images']} image(s) in {summary['index']} ({summary['kind']} index, {summary['dim']} numbers "
          f"per image): {summary['embedded']} embedded now, {summary['kept']} kept from before, {summary['dropped']} "
          f"dropped (no longer in the dataset); {summary['seconds']} s")
    return 0


def _similar(a) -> int:
    from pathlib import Path

    from ..lens.index import load_index, similar

    found = similar(load_index(a.index), Path(a.image), k=a.k)
    if a.json:
        print(json.dumps(found, indent=1))
        return 0
    called = found["query"]["called"]
    print(f"the {found['k']} image(s) of {found['index']} nearest to {a.image} in the model's eyes"
          + (f"; the model calls {', '.join(called)} on it" if called else "; the model calls nothing on it"))
    for n in found["neighbours"]:
        print(f"  {n['distance']:.4f}  {n['path']}  {', '.join(n['labels']) or 'No Finding'}")
    for label, count in found["agreement"].items():
        print(f"  {count} of {found['k']} carry {label}")
    return 0


def _issues(a) -> int:
    if a.folds:
        import sys

        from ..lens.crossfit import crossfit_issues

        found = crossfit_issues(a.checkpoint, a.data, a.folds, folder=a.folder, epochs=a.epochs, mode=a.mode, lr=a.lr,
                                seed=a.seed, log=lambda text: print(text, file=sys.stderr, flush=True))
    else:
        from ..lens.issues import find_issues

        found = find_issues(a.checkpoint, a.data, progress=None if a.json else bar("predict"))
    if a.json:
        print(json.dumps(found.to_dict(), indent=1))
        return 0
    print(f"{len(found.issues)} likely label error(s) among {found.images} image(s) out of sample for the model "
          f"({', '.join(found.labels)})" + (f"; {found.note}" if found.note else ""))
    for r in found.issues[:a.top]:
        print(f"  {r['score']:.3f}  {r['image']}  {r['label']}: given {r['given']}, the model says "
              f"{r['probability']:.2f}")
    if len(found.issues) > a.top:
        print(f"  … {len(found.issues) - a.top} more (--top N, or --json for all)")
    return 0


def _issues_flags(p) -> None:
    p.add_argument("--data", required=True, help="the dataset folder whose labels are checked")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP + " (its probabilities on images it did not "
                                                                          "train on are used)")
    from ..lens.crossfit import FINE_TUNE, FOLD_MODES

    p.add_argument("--folds", type=int, default=0,
                   help="cross-fit: train K models, each without one patient-level fold, so every image's "
                        "probabilities are out of sample (0: only the images the model did not train on)")
    p.add_argument("--epochs", type=int, default=None, help=f"cross-fit: epochs per fold model (default "
                                                             f"{FINE_TUNE['epochs']} when fine-tuning the checkpoint, "
                                                             "else its own recipe's)")
    p.add_argument("--mode", choices=FOLD_MODES, default=None, help="cross-fit: what a fold model trains")
    p.add_argument("--lr", type=float, default=None, help="cross-fit: a fold model's learning rate")
    p.add_argument("--seed", type=int, default=0, help="cross-fit: seeds the folds and the trainings")
    p.add_argument("--folder", default=None, help="cross-fit: where the fold runs are kept (default: the "
                                                  "workspace's cache, by checkpoint, dataset and options); run again, "
                                                  "finished folds are reused and a stopped one resumes")
    p.add_argument("--top", type=int, default=20, help="how many to print (text output)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_issues)


def _duplicates(a) -> int:
    from ..lens.index import load_index, near_duplicates

    found = near_duplicates(load_index(a.index), ratio=a.ratio)
    if a.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"{len(found['pairs'])} near-duplicate pair(s) in {a.index} (distance under {found['threshold']}: "
          f"{found['ratio']} × the median nearest-other distance {found['median_nearest']}); {found['leaks']} across "
          "the model's splits (leaks)")
    for p in found["pairs"]:
        where = f"LEAK {p['split_a']} / {p['split_b']}" if p["leak"] else (p["split_a"] or "-")
        print(f"  {p['distance']:.6f}  {p['a']}  {p['b']}  {where}" + ("  same patient" if p["same_patient"] else ""))
    return 0


def _duplicates_flags(p) -> None:
    from ..lens.index import DUPLICATE_RATIO

    p.add_argument("--index", required=True, help="an index folder of `cxr index`")
    p.add_argument("--ratio", type=float, default=DUPLICATE_RATIO,
                   help="a pair is a near-duplicate under this share of the median nearest-other distance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_duplicates)


def _index_flags(p) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", required=True, help="the dataset folder whose images are embedded")
    p.add_argument("--out", default=None, help="the index folder (default: the workspace's cache, by dataset and "
                                               "model); built again, only new images are embedded")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_index)


def _similar_flags(p) -> None:
    p.add_argument("image", help="a PNG, JPEG or DICOM file")
    p.add_argument("--index", required=True, help="an index folder of `cxr index`")
    p.add_argument("--k", type=int, default=8, help="how many neighbours")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_similar)


INDEX = Command("index", "embed every image of a dataset with a model into a nearest-neighbour index (faiss)",
                _index_flags)
SIMILAR = Command("similar", "the images of an index nearest to an image in the model's eyes, with their labels",
                  _similar_flags)
LABEL_ISSUES = Command("label-issues", "likely label errors of a dataset from a model's out-of-sample probabilities "
                                       "(cleanlab), most likely first", _issues_flags)
DUPLICATES = Command("duplicates", "films of an index whose embeddings nearly coincide, and those across the splits "
                                   "(leaks)", _duplicates_flags)
