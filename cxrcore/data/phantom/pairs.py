"""Follow-up pairs: two films of one patient with a known change per finding (``cxr phantom --pairs``).

Pair ``i`` is one patient (body from its own seed) filmed twice. The prior's findings are a row drawn from the real
label table (as :func:`~.tables.sample_table` draws them), each at full or half strength (half is smaller: a
smaller effusion, a less enlarged heart). The current film keeps where every finding is (one finding seed for both
films) and changes some of them: a finding resolves, grows (``worse``: half to full strength), shrinks (``better``)
or appears (``new``, from a second real row, so co-occurrence stays real), or stays. A share of pairs
(:data:`STABLE_SHARE`) has no change at all, as most follow-ups do. In the CheXpert layout a support device kept in
place may be moved (drawn anew: ``detail`` = ``moved``, its label's change ``unchanged``). What really differs
between two films of a patient differs here too: each film's own pose, noise and exposure, and the follow-up's
rotation, shift, zoom, inspiration and exposure drawn within :data:`FOLLOWUP_POSE`.

Written in the layout of the domain (NIH: ``images/PPPPPPPP_000.png`` and ``_001.png`` with ``Follow-up #`` 0 and 1;
CheXpert: ``train/patientPPPPP/study1`` and ``study2``), with the label table (present = either strength), boxes,
``PHANTOM.json``, and beside them the truth:

- ``pairs.csv``: ``prior, current, label, change`` (paths relative to the folder; change one of
  :data:`cxrcore.labels.CHANGES`) for every label of every pair, then ``pair, patient, prior_strength,
  current_strength, detail``;
- ``landmarks.csv``: ``image, landmark, x, y``: each film's anatomical landmarks in pixels (registration error).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...labels import CHANGES, CHEXPERT14, NIH14, canonical
from .renderer import render_film
from .tables import (BOX_COLUMNS, CHEXPERT_COLUMNS, CHEXPERT_PREFIX, DOMAINS, NIH_COLUMNS, _check_args,
                     _load_table, row_labels)
from .writing import (BOX_FRAME, GENERATOR_VERSION, _box_rows, _pool_context, fresh_folder, move_into_place,
                      save_film, write_nih_lists)

PAIRS_FILE = "pairs.csv"
LANDMARKS_FILE = "landmarks.csv"
PAIR_COLUMNS = ["prior", "current", "label", "change", "pair", "patient", "prior_strength", "current_strength",
                "detail"]
STABLE_SHARE = 0.35
# Half-ranges of the uniform draws of a follow-up's pose against its prior (renderer.POSE_KEYS; zoom as 1 +- x).
FOLLOWUP_POSE = {"rotate": 4.0, "shift_x": 0.04, "shift_y": 0.03, "zoom": 0.06, "inspiration": 0.03, "exposure": 0.04}
MAX_PAIRS = 50_000

# Random streams: rng([seed, domain_code, TAG, pair]) (tables.py's tags are 0-3).
_TAG_PAIR, _TAG_PAIR_PATIENT, _TAG_PAIR_FINDINGS, _TAG_PRIOR, _TAG_CURRENT = 20, 21, 22, 23, 24
_DEVICES = "support devices"


def pair_labels(domain: str) -> list[str]:
    """The labels a pair of ``domain`` carries a change for (the layout's labels; CheXpert's without No Finding)."""
    return list(NIH14) if domain == "nih" else [x for x in CHEXPERT14 if x != "No Finding"]


@dataclass
class PairPlan:
    """One pair before it is drawn: strengths (0, 0.5, 1) of each label in both films, the change of each, and
    what else differs."""
    pair: int
    patient: int
    labels: list[str]
    prior: dict[str, float]
    current: dict[str, float]
    change: dict[str, str]
    detail: dict[str, str] = field(default_factory=dict)
    pose: dict[str, float] = field(default_factory=dict)
    view: str = "PA"
    age: float = 50.0
    sex: str = "M"

    @property
    def stable(self) -> bool:
        return all(c == "unchanged" for c in self.change.values()) and not self.detail


def change_of(before: float, after: float) -> str:
    """The change between two strengths (0 absent, 0.5 small, 1 large), one of :data:`CHANGES`."""
    if before == after:
        return "unchanged"
    if before == 0:
        return "new"
    if after == 0:
        return "resolved"
    return "worse" if after > before else "better"


def plan_pair(i: int, domain: str = "nih", seed: int = 0) -> PairPlan:
    """What pair ``i`` of ``cxr phantom --pairs --seed seed`` shows (deterministic; nothing is drawn)."""
    code = DOMAINS[domain]
    table = _load_table(domain)
    labels = pair_labels(domain)
    by_key = {canonical(x): x for x in labels}
    r = np.random.default_rng([seed, code, _TAG_PAIR, i])

    def present(row) -> list[str]:
        raw = row_labels(row, domain)
        return [by_key[canonical(k)] for k, v in raw.items() if v != 0 and canonical(k) in by_key]

    first = table.iloc[int(r.integers(len(table)))].to_dict()
    prior = {x: 0.0 for x in labels}
    for x in present(first):
        prior[x] = 1.0 if r.random() < 0.6 else 0.5
    current = dict(prior)
    detail: dict[str, str] = {}
    stable = r.random() < STABLE_SHARE
    second = table.iloc[int(r.integers(len(table)))].to_dict()
    if not stable:
        for x in labels:
            if prior[x]:
                u = r.random()
                if u < 0.35:
                    continue
                current[x] = 0.0 if u < 0.65 else (0.5 if prior[x] == 1.0 else 1.0)
        for x in present(second):
            if not prior[x] and r.random() < 0.7:
                current[x] = 1.0 if r.random() < 0.6 else 0.5
        if current == prior:  # a changed pair changes something
            shown = [x for x in labels if prior[x]]
            x = shown[0] if shown else labels[int(r.integers(len(labels)))]
            current[x] = 0.0 if prior[x] else 1.0
        dev = by_key.get(_DEVICES)
        if dev and prior[dev] and current[dev] == prior[dev] and r.random() < 0.5:
            detail[dev] = "moved"
    pose = {k: float(r.uniform(-h, h)) for k, h in FOLLOWUP_POSE.items()}
    pose["zoom"] = 1.0 + pose["zoom"]
    age = first.get("Patient Age", first.get("Age", 50))
    sex = first.get("Patient Gender", first.get("Sex", "M"))
    view = first.get("View Position", first.get("AP/PA", "PA"))
    return PairPlan(i, i + 1, labels, prior, current, {x: change_of(prior[x], current[x]) for x in labels},
                    detail, pose, str(view) if isinstance(view, str) else "PA",
                    float(age) if age == age else 50.0, str(sex)[:1] if isinstance(sex, str) else "M")


def _paths(plan: PairPlan, domain: str) -> tuple[str, str]:
    if domain == "nih":
        return f"images/{plan.patient:08d}_000.png", f"images/{plan.patient:08d}_001.png"
    return (f"train/patient{plan.patient:05d}/study1/view1_frontal.jpg",
            f"train/patient{plan.patient:05d}/study2/view1_frontal.jpg")


def _render_value(strength: float) -> float:
    return 1.0 if strength >= 1.0 else (-1.0 if strength > 0 else 0.0)  # the renderer draws -1 at half strength


def _work(task):
    """Render and write both films of one pair (a pool worker or in-process)."""
    plan, domain, size, seed, root = task
    code = DOMAINS[domain]
    pkey = [seed, code, _TAG_PAIR_PATIENT, plan.pair]
    fkey = [seed, code, _TAG_PAIR_FINDINGS, plan.pair]
    out = []
    for which, strengths, tag, pose in (("prior", plan.prior, _TAG_PRIOR, None),
                                        ("current", plan.current, _TAG_CURRENT, plan.pose)):
        labels = {x: _render_value(s) for x, s in strengths.items() if s}
        reseed = [x for x, d in plan.detail.items() if d == "moved"] if which == "current" else []
        img, boxes, marks = render_film(labels, [seed, code, tag, plan.pair], domain, size, pkey, plan.view,
                                        finding_seed=fkey, reseed=reseed, pose=pose)
        save_film(os.path.join(root, _paths(plan, domain)[0 if which == "prior" else 1]), img, domain)
        out.append((boxes, marks))
    return plan.pair, out


def generate_pairs(out: str | Path, n: int, domain: str = "nih", size: int = 256, seed: int = 0, workers: int = 2,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ``n`` prior / current pairs of phantom films with their truth into ``out`` (a new or empty folder).

    Built in a hidden sibling folder and renamed into place at the end, as :func:`~.writing.generate` does."""
    _check_args(n, domain, size, seed, workers)
    if n > MAX_PAIRS:
        raise ConfigError(f"{n} pairs is more than the phantom generator makes ({MAX_PAIRS}); ask for fewer.")
    n, size, seed, workers = int(n), int(size), int(seed), int(workers)
    out = fresh_folder(out)
    plans = [plan_pair(i, domain, seed) for i in range(n)]
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for p in plans:
            for path in _paths(p, domain):
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        tasks = [(p, domain, size, seed, str(tmp)) for p in plans]
        drawn: dict[int, list] = {}
        ctx = _pool_context() if workers > 1 and n > 1 else None
        if ctx is None:  # one worker, or a threaded process (fork unsafe): in this process
            for t in tasks:
                i, films = _work(t)
                drawn[i] = films
                if progress:
                    progress(len(drawn), n)
        else:
            with ctx.Pool(min(workers, n)) as pool:
                for i, films in pool.imap_unordered(_work, tasks, chunksize=max(1, min(8, n // (workers * 4)))):
                    drawn[i] = films
                    if progress:
                        progress(len(drawn), n)
        _write_tables(tmp, plans, drawn, domain, size, seed)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tables(root: Path, plans: list[PairPlan], drawn: dict[int, list], domain: str, size: int, seed: int):
    import pandas as pd

    pair_rows, mark_rows, box_rows, films = [], [], [], []
    for p in plans:
        prior_path, current_path = _paths(p, domain)
        for x in p.labels:
            pair_rows.append((prior_path, current_path, x, p.change[x], p.pair, p.patient, p.prior[x], p.current[x],
                              p.detail.get(x, "")))
        for k, (path, strengths) in enumerate(((prior_path, p.prior), (current_path, p.current))):
            boxes, marks = drawn[p.pair][k]
            mark_rows += [(path, name, round(x, 2), round(y, 2)) for name, (x, y) in marks.items()]
            image_id = Path(path).name if domain == "nih" else f"{CHEXPERT_PREFIX}/{path}"
            box_rows += _box_rows(image_id, boxes, size, domain)
            films.append((p, k, image_id, strengths))
    pd.DataFrame(pair_rows, columns=PAIR_COLUMNS).to_csv(root / PAIRS_FILE, index=False)
    pd.DataFrame(mark_rows, columns=["image", "landmark", "x", "y"]).to_csv(root / LANDMARKS_FILE, index=False)
    if domain == "nih":
        spacing = round(0.143 * BOX_FRAME / size, 3)
        rows = [{"Image Index": image_id,
                 "Finding Labels": "|".join(x for x in p.labels if s[x]) or "No Finding",
                 "Follow-up #": k, "Patient ID": p.patient, "Patient Age": int(p.age), "Patient Gender": p.sex,
                 "View Position": p.view, "OriginalImage[Width": size, "Height]": size,
                 "OriginalImagePixelSpacing[x": spacing, "y]": spacing} for p, k, image_id, s in films]
        table = pd.DataFrame(rows, columns=NIH_COLUMNS)
        table.to_csv(root / "Data_Entry_2017.csv", index=False)
        write_nih_lists(root, table["Image Index"], table["Patient ID"], seed)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(root / "BBox_List_2017.csv", index=False)
    else:
        rows = []
        for p, k, image_id, s in films:
            row = {"Path": image_id, "Sex": {"M": "Male", "F": "Female"}.get(p.sex, p.sex), "Age": int(p.age),
                   "Frontal/Lateral": "Frontal", "AP/PA": p.view}
            row.update({x: (1.0 if s.get(x) else 0.0) for x in CHEXPERT14 if x != "No Finding"})
            row["No Finding"] = 0.0 if any(s.values()) else 1.0
            rows.append(row)
        pd.DataFrame(rows, columns=CHEXPERT_COLUMNS).to_csv(root / "train.csv", index=False)
        pd.DataFrame(columns=CHEXPERT_COLUMNS).to_csv(root / "valid.csv", index=False)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(root / "phantom_boxes.csv", index=False)
    (root / "PHANTOM.json").write_text(json.dumps({
        "generator": "cxrcore.data.phantom", "version": GENERATOR_VERSION, "domain": domain, "n": 2 * len(plans),
        "pairs": len(plans), "size": size, "seed": seed, "followup_pose": FOLLOWUP_POSE,
        "changes": list(CHANGES), "stable_share": STABLE_SHARE,
    }, indent=2) + "\n")


def read_pairs(root: str | Path):
    """``pairs.csv`` of a folder of pairs, checked: the contract's columns, known changes, files that exist.
    DataError-style ConfigError saying what is wrong otherwise."""
    import pandas as pd

    root = Path(root)
    path = root / PAIRS_FILE
    if not path.is_file():
        raise ConfigError(f"{root} has no {PAIRS_FILE}; make a folder of pairs with "
                          "cxr phantom --out FOLDER --pairs --n N, or write pairs.csv (prior, current, label, change).")
    try:
        table = pd.read_csv(path, dtype={"prior": str, "current": str, "label": str, "change": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path} could not be read as CSV: {exc}") from None
    missing = [c for c in PAIR_COLUMNS[:4] if c not in table.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {missing}; it needs prior, current, label, change.")
    bad = sorted(set(table["change"].dropna()) - set(CHANGES)) + (["(blank)"] if table["change"].isna().any() else [])
    if bad:
        raise ConfigError(f"{path} has change value(s) {bad[:5]}; use one of {', '.join(CHANGES)}.")
    files = set(table["prior"]).union(table["current"])
    absent = sorted(f for f in files if not (root / str(f)).is_file())
    if absent:
        raise ConfigError(f"{len(absent)} film(s) named in {path} are not in {root}, e.g. {absent[0]}.")
    return table
