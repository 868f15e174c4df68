"""A stored study's answers as an MRMC analysis (:mod:`cxrcore.eval.readers`), one finding at a time: the arms
are the modalities (``aided`` listed first, so a difference reads aided − unaided), the model fixed at set-up is the standalone arm, the readers are those
who have read every case in every arm (the analysis needs a fully crossed design: the others are named in a note).
Adds what only a study has: the model's ROC curve with each reader's operating point per arm, reading times and
the hit rate of location marks against the ground-truth boxes."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
from sklearn.metrics import roc_curve

from ..errors import DataError
from ..eval.readers.analysis import analyze
from ..eval.readers.ratings import ReaderStudy, to_imrmc, to_long_csv
from .design import CALL_AT, EXPORT_FORMATS
from .store import StudyStore


def study_ratings(store: StudyStore, study_id: str, finding: str) -> tuple[ReaderStudy, list[str]]:
    """The fully crossed ratings of ``finding`` (readers who finished every read), and notes on who was left out."""
    study = store.study(study_id)
    d = study.design
    if finding not in d.findings:
        raise DataError(f"{finding!r} is not read in this study; its findings: {', '.join(d.findings)}.")
    cases = store.cases(study_id)
    numbers = [c.number for c in cases]
    arms = sorted(d.arms, key=lambda arm: arm != "aided")   # aided first: the difference is aided - unaided
    readers, rows, notes = [], [], []
    for reader in store.readers(study_id):
        got = {(a.case, a.arm): a.rating for a in store.answers(study_id, reader.number) if a.finding == finding}
        missing = sum(1 for c in numbers for arm in arms if (c, arm) not in got)
        if missing:
            notes.append(f"{reader.name}: {missing} of {len(numbers) * len(arms)} reads not answered yet; left out "
                         "of the analysis until finished.")
            continue
        readers.append(reader.name)
        rows.append([[got[(c, arm)] for c in numbers] for arm in arms])
    if not readers:
        raise DataError("No reader has read every case yet: the analysis starts when one has. " + " ".join(notes))
    truth = np.array([c.truth[finding] for c in cases], dtype=int)
    if truth.min() == truth.max():
        raise DataError(f"Every case of this study is {'positive' if truth[0] else 'negative'} for {finding}: an "
                        "ROC analysis needs both.")
    ratings = np.transpose(np.array(rows, dtype=float), (1, 0, 2))   # (arms, readers, cases)
    model = np.array([c.model[finding] for c in cases], dtype=float) if all(finding in c.model for c in cases) \
        else None
    rs = ReaderStudy(modalities=tuple(arms), readers=tuple(readers), cases=tuple(str(n) for n in numbers),
                     truth=truth, ratings=ratings, model=model, model_name="model" if model is not None else None,
                     source=f"study {study_id}, {finding}")
    return rs, notes


def _inside(mark, boxes) -> bool:
    x, y = mark
    return any(bx <= x <= bx + bw and by <= y <= by + bh for bx, by, bw, bh in boxes)


def study_analysis(store: StudyStore, study_id: str, finding: str, covariance: str = "jackknife",
                   alpha: float = 0.05) -> dict:
    """:func:`cxrcore.eval.readers.analysis.analyze` of the study's ratings of ``finding``, plus ``roc`` (the
    model's curve and each reader's operating point per arm at the scale's call), ``reading_time`` (median
    seconds per reader and arm), ``location`` (hit rate of marks on positive cases with boxes) and ``study``."""
    study = store.study(study_id)
    rs, notes = study_ratings(store, study_id, finding)
    threshold = study.source.get("aided", {}).get("thresholds", {}).get(finding)
    cut = CALL_AT[study.design.scale]
    result = analyze(rs, covariance=covariance, alpha=alpha, cutoff=cut, model_threshold=threshold)
    result["notes"] = notes + result["notes"]
    result["study"] = {"id": study.id, "name": study.name, "design": study.design.design, "finding": finding,
                       "scale": study.design.scale, "call_at": cut, "model_threshold": threshold}
    roc: dict = {"readers": {}}
    if rs.model is not None:
        fpr, tpr, _ = roc_curve(rs.truth, rs.model)
        roc["model"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        if threshold is not None:
            calls = rs.model >= threshold
            roc["model"]["point"] = {"fpr": float(calls[rs.truth == 0].mean()), "tpr": float(calls[rs.truth == 1].mean())}
    for j, r in enumerate(rs.readers):
        roc["readers"][r] = {}
        for i, arm in enumerate(rs.modalities):
            calls = rs.ratings[i, j] >= cut
            roc["readers"][r][arm] = {"fpr": float(calls[rs.truth == 0].mean()), "tpr": float(calls[rs.truth == 1].mean())}
    result["roc"] = roc
    by_name = {r.name: r.number for r in store.readers(study_id)}
    cases = {c.number: c for c in store.cases(study_id)}
    times: dict = {}
    location: dict = {}
    for r in rs.readers:
        answers = [a for a in store.answers(study_id, by_name[r]) if a.finding == finding]
        times[r] = {}
        for arm in rs.modalities:
            secs = sorted(a.seconds for a in answers if a.arm == arm and a.seconds is not None)
            times[r][arm] = float(np.median(secs)) if secs else None
        if study.design.mark_location:
            location[r] = {}
            for arm in rs.modalities:
                scored = [a for a in answers if a.arm == arm and cases[a.case].truth.get(finding) == 1
                          and cases[a.case].boxes.get(finding)]
                hits = sum(1 for a in scored if a.mark is not None and _inside(a.mark, cases[a.case].boxes[finding]))
                location[r][arm] = {"hits": hits, "positives_with_boxes": len(scored),
                                    "rate": hits / len(scored) if scored else None}
    result["reading_time"] = times
    result["location"] = location or None
    return result


def export(store: StudyStore, study_id: str, finding: str, kind: str = "long") -> str:
    """The study's answers for ``finding`` in one of :data:`EXPORT_FORMATS`: the long format and iMRMC's, for
    checking the analysis with other tools; the audit trail, for the study's records."""
    if kind not in EXPORT_FORMATS:
        raise DataError(f"Export format {kind!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    if kind == "audit":
        return _audit_csv(store, study_id, finding)
    rs, _ = study_ratings(store, study_id, finding)
    if kind == "long":
        return to_long_csv(rs)
    # iMRMC splits on commas and drops white space: reader names made safe for it
    safe = [re.sub(r"[\s,]+", "_", r) or f"reader{k + 1}" for k, r in enumerate(rs.readers)]
    if len(set(safe)) < len(safe):
        safe = [f"reader{k + 1}" for k in range(len(safe))]
    return to_imrmc(replace(rs, readers=tuple(safe)))


def _audit_csv(store: StudyStore, study_id: str, finding: str) -> str:
    import csv
    import io
    from datetime import datetime, timezone

    study = store.study(study_id)
    if finding not in study.design.findings:
        raise DataError(f"The study reads {', '.join(study.design.findings)}, not {finding!r}.")
    names = {r.number: r.name for r in store.readers(study_id)}
    sources = {c.number: c.source_id for c in store.cases(study_id)}
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["reader", "case", "source_id", "arm", "session", "finding", "rating", "mark_x", "mark_y",
                "answered_utc", "seconds", "revision"])
    revision: dict[tuple, int] = {}
    for a in store.answer_log(study_id):
        if a.finding != finding:
            continue
        k = revision[(a.reader, a.case, a.arm)] = revision.get((a.reader, a.case, a.arm), 0) + 1
        w.writerow([names.get(a.reader, a.reader), a.case, sources.get(a.case, ""), a.arm, a.session, a.finding,
                    f"{a.rating:g}", "" if a.mark is None else f"{a.mark[0]:.4f}",
                    "" if a.mark is None else f"{a.mark[1]:.4f}",
                    datetime.fromtimestamp(a.answered_at, timezone.utc).isoformat(timespec="seconds"),
                    "" if a.seconds is None else f"{a.seconds:.1f}", k])
    return out.getvalue()
