"""Drift monitoring without labels (issue 23 §3; ``cxr monitor``, the Monitoring page).

The images a deployment scores (a table of ``cxr score``, a scoring job's or an automatic PACS scoring's) are cut
into windows (a day, a week, or every N images in the order they were scored) and each window is compared with the
**reference**: the same kind of table scored on the model's validation split. Three families of evidence, in the
spirit of CheXstray (Soin et al., 2022: a unified drift metric over model outputs, image metadata and a learned
representation, each standardised against the reference's own variation):

- **outputs**: each label's probabilities, by the Kolmogorov-Smirnov statistic (scipy's ``ks_2samp``, its p-value
  shown) and the population stability index (10 bins at the reference's deciles; by the usual reading, under 0.1
  stable, over 0.25 a large shift; shown, not scored);
- **image**: the image statistics the out-of-distribution guard computes (brightness, contrast, entropy, noise as
  neighbour correlation, edge density, white fraction, symmetry: ``cxrcore.score.IMAGE_STATS``), each by KS;
- **embedding**: the model's penultimate-layer features (the table's ``embedding``), by the maximum mean discrepancy
  (squared, unbiased, Gaussian kernel at the reference's median distance; Gretton et al., JMLR 2012) with a
  permutation p-value.

**Standardised against the reference's own variation.** The reference is split in two halves at random: one, *A*,
is what every window is compared with; from the other, *B*, ``n_null`` windows of the same size are drawn and
compared with *A* the same way. A component's *z* is how many standard deviations of those null windows its
statistic lies above their mean; a family's score is its largest component *z*, itself standardised against the
null windows' family scores; the **drift score** is the largest of the families' scores (each times its weight;
the largest, so that a change only one family sees is not diluted by the others), standardised the same way. So
a drift score of 3 means "three standard deviations of what windows of the reference itself show", whatever the
window's size and whichever families are present, and a window **alarms** at ``alarm_at`` (3 by default). The
false-alarm rate this gives on a stream with no change, and the first alarming window on streams that change, are
measured on the phantom in ``bench/drift.py`` (``bench/RESULTS.md``).

**The images behind a window**: those where the MMD's witness function is largest (the embedding's density is
higher in the window than in the reference there), with their out-of-distribution reasons.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

FAMILIES = ("outputs", "image", "embedding")
WINDOWS = ("day", "week")          # or a whole number: every N images
MIN_WINDOW = 20                    # a smaller window is reported, not scored
MIN_REFERENCE = 60                 # the reference rows needed (two halves of 30)
ALARM_AT = 3.0
N_NULL = 100
N_PERM = 200
MMD_REFERENCE = 400                # rows of A the MMD compares a window with (its kernel cost is quadratic)
MMD_WINDOW_PERM = 400              # rows of a window its permutation p-value is computed on, at most
TOP_IMAGES = 5
PSI_BINS = 10
GROUP = "patient"                  # the reference table's column of (hashed) patient identifiers


def psi(reference: np.ndarray, window: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``window`` against ``reference`` on the reference's quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        return 0.0
    edges[0], edges[-1] = -np.inf, np.inf
    r = np.histogram(reference, edges)[0] / len(reference)
    w = np.histogram(window, edges)[0] / len(window)
    r, w = np.clip(r, 1e-4, None), np.clip(w, 1e-4, None)
    return float(np.sum((w - r) * np.log(w / r)))


def _ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T, 0.0)


def bandwidth(x: np.ndarray, seed: int = 0) -> float:
    """The median pairwise distance of (up to 500 of) ``x``: the Gaussian kernel's width (the median heuristic)."""
    rng = np.random.default_rng(seed)
    s = x[rng.choice(len(x), min(len(x), 500), replace=False)]
    d = np.sqrt(_sqdist(s, s)[np.triu_indices(len(s), 1)])
    med = float(np.median(d)) if len(d) else 1.0
    return med if med > 0 else 1.0


def _mmd2(k: np.ndarray, n: int) -> float:
    """Unbiased squared MMD from the kernel matrix of [window (n); reference (m)]."""
    m = len(k) - n
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())


def mmd(window: np.ndarray, reference: np.ndarray, width: float, n_perm: int = 0,
        seed: int = 0) -> tuple[float, float | None, np.ndarray]:
    """(squared MMD, its permutation p-value (None without permutations), the witness function at each window
    point: the mean kernel to the window minus the mean kernel to the reference)."""
    z = np.concatenate([window, reference]).astype(np.float64)
    k = np.exp(-_sqdist(z, z) / (2.0 * width * width))
    n = len(window)
    stat = _mmd2(k, n)
    witness = k[:n, :n].mean(1) - k[:n, n:].mean(1)
    if not n_perm:
        return stat, None, witness
    rng = np.random.default_rng(seed)
    higher = 0
    for _ in range(n_perm):
        p = rng.permutation(len(z))
        higher += _mmd2(k[np.ix_(p, p)], n) >= stat
    return stat, (higher + 1) / (n_perm + 1), witness


@dataclass
class Stream:
    """A scored table's columns drift monitoring reads: per row ``probs`` (N, L), image ``stats`` (N, S),
    ``embedding`` (N, D) or None, ``scored_at`` (datetime64, or None), ``paths`` and ``ood`` reasons."""

    labels: list[str]
    stats_names: list[str]
    probs: np.ndarray
    stats: np.ndarray
    embedding: np.ndarray | None
    scored_at: np.ndarray | None
    paths: list[str]
    ood: list[str]
    model: str = ""
    card_sha256: str = ""
    groups: np.ndarray | None = None   # a reference's patients (hashed): its halves and null windows respect them

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: np.ndarray) -> "Stream":
        return Stream(self.labels, self.stats_names, self.probs[rows], self.stats[rows],
                      None if self.embedding is None else self.embedding[rows],
                      None if self.scored_at is None else self.scored_at[rows],
                      [self.paths[i] for i in rows], [self.ood[i] for i in rows], self.model, self.card_sha256,
                      None if self.groups is None else self.groups[rows])


def read_stream(table: str | Path, labels: list[str] | None = None) -> Stream:
    """A table of ``cxr score`` (Parquet) as a :class:`Stream`, rows in the order they were scored. ``labels``:
    those to read (default: every label column the table has)."""
    import pandas as pd

    path = Path(table)
    if not path.is_file() or path.suffix.lower() != ".parquet":
        raise DataError(f"{table} is not a scored table: give the .parquet file `cxr score` wrote.")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same advice
        raise DataError(f"{path.name} could not be read as Parquet ({type(exc).__name__}).") from None
    return _stream_of(frame, path.name, labels)


def read_log(network: str, labels: list[str], source: str | None = None, path: str | Path | None = None) -> Stream:
    """What the REST service and the PACS watch scored with the network ``network`` (its digest:
    :func:`cxrcore.runtime.network_digest`), from the workspace's monitoring log (:mod:`cxrcore.monitorlog`;
    ``source``: one of them only), as a :class:`Stream` of ``labels``."""
    from ..monitorlog import ScoreLog, db_path

    if not Path(path or db_path()).is_file():
        raise DataError("Nothing has been scored into the monitoring log yet (the REST service and the PACS watch "
                        "write it; CXR_MONITOR_LOG=off turns it off).")
    frame = ScoreLog(path).frame(network, source)
    if frame.empty:
        raise DataError("The monitoring log holds nothing scored by this model yet"
                        + (f" from {source}" if source else "") + ".")
    return _stream_of(frame, "the monitoring log", labels)


def _stream_of(frame, name: str, labels: list[str] | None) -> Stream:
    import pandas as pd

    from ..score import EMBEDDING, IMAGE_STATS

    stat_cols = [f"image {s}" for s in IMAGE_STATS]
    missing = [c for c in ["path", "scored_at", *stat_cols] if c not in frame.columns]
    if missing:
        raise DataError(f"{name} lacks {', '.join(missing[:4])}: it was scored before drift monitoring kept "
                        "them. Score the images again with `cxr score` (the new table has them).")
    if labels is None:
        labels = [c[:-len(" call")] for c in frame.columns if c.endswith(" call")]
    absent = [x for x in labels if x not in frame.columns]
    if absent:
        raise DataError(f"{name} has no column for {', '.join(absent[:4])}: it was scored by another model.")
    times = pd.to_datetime(frame["scored_at"], utc=True, errors="coerce")
    order = np.argsort(times.to_numpy(), kind="stable") if times.notna().all() else np.arange(len(frame))
    frame = frame.iloc[order].reset_index(drop=True)
    times = times.iloc[order].reset_index(drop=True)
    emb = None
    if EMBEDDING in frame.columns and frame[EMBEDDING].notna().all() and len(frame):
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in frame[EMBEDDING]])
    return Stream(list(labels), list(IMAGE_STATS), frame[labels].to_numpy(np.float64),
                  frame[stat_cols].to_numpy(np.float64), emb,
                  times.dt.tz_localize(None).to_numpy() if times.notna().all() else None,
                  frame["path"].astype(str).tolist(), frame.get("ood", pd.Series([""] * len(frame))).fillna("")
                  .astype(str).tolist(), str(frame["model"].iloc[0]) if len(frame) else "",
                  str(frame["card_sha256"].iloc[0]) if len(frame) else "",
                  frame[GROUP].astype(str).to_numpy() if GROUP in frame.columns else None)


def windows_of(stream: Stream, window: str | int) -> list[tuple[str, str, np.ndarray]]:
    """(start, end, rows) of each window: ``day`` / ``week`` by ``scored_at`` (UTC; ISO dates), or every ``N``
    images in the order they were scored (start and end: the first and last row's number)."""
    if isinstance(window, str) and window.strip().isdigit():
        window = int(window)
    if isinstance(window, int):
        if window < MIN_WINDOW:
            raise DataError(f"A window of {window} images is too small to compare; use at least {MIN_WINDOW}.")
        return [(f"#{i + 1}", f"#{min(i + window, len(stream))}", np.arange(i, min(i + window, len(stream))))
                for i in range(0, len(stream), window)]
    if window not in WINDOWS:
        raise DataError(f"Unknown window {window!r}: use {', '.join(WINDOWS)} or a number of images.")
    if stream.scored_at is None:
        raise DataError("The table's rows have no scoring time: use a window of N images.")
    days = stream.scored_at.astype("datetime64[D]")
    if window == "week":   # weeks from Monday (day 0 of the epoch, 1970-01-01, was a Thursday)
        days = days - ((days.astype(np.int64) + 3) % 7).astype("timedelta64[D]")
    span = np.timedelta64(6 if window == "week" else 0, "D")
    return [(str(key), str(key + span), np.flatnonzero(days == key)) for key in np.unique(days)]


@dataclass
class _Reference:
    a: Stream
    b: Stream
    a_mmd: np.ndarray | None
    width: float


def _components(ref: _Reference, w: Stream) -> dict[str, dict[str, float]]:
    """Each component's statistic (and what is shown beside it) for window ``w``."""
    out: dict[str, dict[str, float]] = {}
    for j, label in enumerate(w.labels):
        d, p = _ks(w.probs[:, j], ref.a.probs[:, j])
        out[f"outputs:{label}"] = {"ks": d, "p": p, "psi": psi(ref.a.probs[:, j], w.probs[:, j]), "stat": d}
    for j, name in enumerate(w.stats_names):
        a, x = ref.a.stats[:, j], w.stats[:, j]
        if np.isnan(a).all() or np.isnan(x).all():
            continue
        d, p = _ks(x[~np.isnan(x)], a[~np.isnan(a)])
        out[f"image:{name}"] = {"ks": d, "p": p, "stat": d, "window_mean": float(np.nanmean(x)),
                                "reference_mean": float(np.nanmean(a))}
    if ref.a_mmd is not None and w.embedding is not None:
        stat, _, _ = mmd(w.embedding, ref.a_mmd, ref.width)
        out["embedding:mmd"] = {"mmd": stat, "stat": stat}
    return out


def _family_scores(z: dict[str, float]) -> dict[str, float]:
    fam: dict[str, list[float]] = {}
    for key, v in z.items():
        fam.setdefault(key.split(":", 1)[0], []).append(v)
    return {f: max(v) for f, v in fam.items()}


def _combine(family_z: dict[str, float], weights: dict[str, float]) -> float:
    """The families' scores into one: the largest, each times its weight (0 leaves a family out). The largest, not
    the mean: a change only one family sees (a new detector's contrast the model's embedding ignores) is not
    diluted by the quiet ones; the result is standardised against the null windows' own, so it stays calibrated."""
    kept = [weights.get(f, 1.0) * z for f, z in family_z.items() if weights.get(f, 1.0) > 0]
    return max(kept) if kept else 0.0


def _standardise(value: float, null: np.ndarray) -> float:
    sd = float(np.std(null))
    return float((value - np.mean(null)) / (sd if sd > 1e-12 else 1e-12))


@dataclass
class DriftReport:
    windows: list[dict]
    alarm_at: float
    reference_rows: int
    stream_rows: int
    window: str
    families: list[str]
    weights: dict[str, float]
    model: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def alarms(self) -> list[dict]:
        return [w for w in self.windows if w.get("alarm")]

    def to_dict(self) -> dict:
        return {"windows": self.windows, "alarms": [w["index"] for w in self.alarms], "alarm_at": self.alarm_at,
                "latest_alarm": bool(self.windows and self.windows[-1].get("alarm")),
                "reference_rows": self.reference_rows, "stream_rows": self.stream_rows, "window": self.window,
                "families": self.families, "weights": self.weights, "model": self.model, "notes": self.notes}


def _readable(key: str, c: dict) -> str:
    family, name = key.split(":", 1)
    if family == "outputs":
        return f"{name} probabilities (KS {c['ks']:.2f}, PSI {c['psi']:.2f})"
    if family == "image":
        return (f"image {name.replace('_', ' ')} (KS {c['ks']:.2f}; mean {c['window_mean']:.3f} against "
                f"{c['reference_mean']:.3f})")
    p = c.get("p")
    return f"model embedding (MMD² {c['mmd']:.4f}" + ("" if p is None else f", permutation p {p:.3f}") + ")"


def monitor(stream: Stream, reference: Stream, window: str | int = "day", *, alarm_at: float = ALARM_AT,
            weights: dict[str, float] | None = None, n_null: int = N_NULL, n_perm: int = N_PERM,
            seed: int = 0, progress=None) -> DriftReport:
    """Each window of ``stream`` against ``reference`` (see the module's text)."""
    if len(reference) < MIN_REFERENCE:
        raise DataError(f"The reference has {len(reference)} scored images; drift needs at least {MIN_REFERENCE} "
                        "(the model's validation split, scored).")
    if list(reference.labels) != list(stream.labels):
        raise DataError("The reference and the stream were scored with different labels: score both with the "
                        "same model.")
    notes = []
    if stream.card_sha256 and reference.card_sha256 and stream.card_sha256 != reference.card_sha256:
        notes.append("The stream and the reference were scored by different model cards (thresholds or site may "
                     "differ); the probabilities compared are each table's own.")
    rng = np.random.default_rng(seed)
    groups = reference.groups if reference.groups is not None else np.arange(len(reference)).astype(str)
    names = rng.permutation(np.unique(groups))
    in_a = np.isin(groups, names[:len(names) // 2])
    a, b = reference.take(np.flatnonzero(in_a)), reference.take(np.flatnonzero(~in_a))
    if b.groups is not None:
        b_groups = [np.flatnonzero(b.groups == g) for g in np.unique(b.groups)]
    else:
        b_groups = [np.array([i]) for i in range(len(b))]
    use_emb = a.embedding is not None and stream.embedding is not None
    if not use_emb:
        notes.append("No embedding in the tables (a model without a split head, or a table scored before): the "
                     "embedding family is left out.")
    a_mmd = a.embedding[:MMD_REFERENCE].astype(np.float64) if use_emb else None
    ref = _Reference(a, b, a_mmd, bandwidth(a_mmd, seed) if use_emb else 1.0)
    weights = {f: float((weights or {}).get(f, 1.0)) for f in FAMILIES}
    wins = windows_of(stream, window)
    nulls: dict[int, dict] = {}

    def null_for(n: int) -> dict:
        if n not in nulls:
            comps, fams, combined = [], [], []
            for _ in range(n_null):   # a bootstrap draw of B's patients, one film of each
                rows = np.array([rng.choice(b_groups[g]) for g in rng.integers(0, len(b_groups), n)])
                comps.append({k: v["stat"] for k, v in _components(ref, b.take(rows)).items()})
            keys = list(comps[0])
            stats = {k: np.array([c[k] for c in comps]) for k in keys}
            z_null = [{k: _standardise(c[k], stats[k]) for k in keys} for c in comps]
            fams = [_family_scores(z) for z in z_null]
            fam_null = {f: np.array([x[f] for x in fams]) for f in fams[0]}
            combined = np.array([_combine({f: _standardise(x[f], fam_null[f]) for f in x}, weights) for x in fams])
            nulls[n] = {"stats": stats, "families": fam_null, "combined": combined}
        return nulls[n]

    out = []
    for i, (start, end, rows) in enumerate(wins):
        entry = {"index": i, "start": start, "end": end, "n": int(len(rows))}
        if len(rows) < MIN_WINDOW:
            entry.update(score=None, alarm=False, note=f"{len(rows)} images: too few to compare "
                                                         f"(at least {MIN_WINDOW})")
            out.append(entry)
            continue
        w = stream.take(rows)
        comps = _components(ref, w)
        null = null_for(len(rows))
        z = {k: _standardise(c["stat"], null["stats"][k]) for k, c in comps.items() if k in null["stats"]}
        fam = _family_scores(z)
        fam_z = {f: _standardise(v, null["families"][f]) for f, v in fam.items()}
        combined = _combine(fam_z, weights)
        score = _standardise(combined, null["combined"])
        top = []
        if use_emb:
            _, _, witness = mmd(w.embedding, ref.a_mmd, ref.width)
            sub = np.random.default_rng(seed + i).permutation(len(w))[:MMD_WINDOW_PERM]
            _, p, _ = mmd(w.embedding[sub], ref.a_mmd, ref.width, n_perm=n_perm, seed=seed + i)
            comps["embedding:mmd"]["p"] = p
            for j in np.argsort(-witness)[:TOP_IMAGES]:
                top.append({"path": w.paths[j], "witness": round(float(witness[j]), 5), "ood": w.ood[j]})
        for k, c in comps.items():
            c["z"] = round(z.get(k, 0.0), 3)
        entry.update(score=round(float(score), 3), alarm=bool(score >= alarm_at),
                     families={f: round(v, 3) for f, v in fam_z.items()},
                     components={k: {kk: (round(vv, 5) if isinstance(vv, float) else vv) for kk, vv in c.items()
                                     if kk != "stat"} for k, c in comps.items()},
                     top_images=top,
                     mean_probability={x: [round(float(w.probs[:, j].mean()), 4),
                                           round(float(ref.a.probs[:, j].mean()), 4)] for j, x in enumerate(w.labels)})
        why = sorted(((z[k], k) for k in z if z[k] >= alarm_at), reverse=True)
        entry["why"] = [f"{_readable(k, comps[k])}: z {v:.1f}" for v, k in why[:6]]
        out.append(entry)
        if progress:
            progress(i + 1, len(wins))
    return DriftReport(out, float(alarm_at), len(reference), len(stream), str(window),
                       [f for f in FAMILIES if f != "embedding" or use_emb], weights, stream.model, notes)


def reference_table(checkpoint, data, split: str = "val", *, site: str | None = None, runtime: str = "torch",
                    progress=None) -> Path:
    """The model's ``split`` of the labelled dataset ``data`` scored like a stream (a table of
    :func:`cxrcore.score.score`), kept in the workspace's cache under the model's network and the split's images
    (scored once; a later call reads it)."""
    import pandas as pd

    from .. import workspace
    from ..data.readers import read_dataset
    from ..predictor import Predictor
    from ..runtime import network_digest, scorer
    from ..score import score, source_of
    from .predictions import model_split_rows

    predictor = Predictor(checkpoint)
    predictor.set_card(predictor.card.with_site(site))
    index = read_dataset(data)
    rows = model_split_rows(predictor, index, split)
    paths = [p for p in index.frame["path"].iloc[rows] if isinstance(p, str)] if len(rows) else []
    if len(paths) < MIN_REFERENCE:
        raise DataError(f"The {split} split of {index.name} has {len(paths)} images with files; drift needs at "
                        f"least {MIN_REFERENCE}. Give a larger reference (--reference DATA) or --split all.")
    key = hashlib.sha256(f"{network_digest(predictor.card)}|{index.fingerprint()}|{split}|{site or ''}".encode()
                         ).hexdigest()[:20]
    folder = workspace.cache() / "drift"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"reference-{key}.parquet"
    if out.exists():
        return out
    listing = folder / f"reference-{key}.csv"
    pd.DataFrame({"path": paths}).to_csv(listing, index=False)
    runner, _, _ = scorer(predictor, runtime)
    scored = folder / f".reference-{key}.scoring.parquet"
    score(source_of(str(listing)), runner, scored, predictor.name,
          progress=(lambda d, t, e: progress(d, t)) if progress else None)
    # Each row's patient, hashed (a film of the same patient is not an independent sample of the reference)
    patients = {p: hashlib.sha256(str(pid).encode()).hexdigest()[:12]
                for p, pid in zip(index.frame["path"].iloc[rows], index.frame["patient_id"].iloc[rows])}
    table = pd.read_parquet(scored)
    table[GROUP] = table["path"].map(patients)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(out)
    for f in (listing, scored, scored.with_suffix(".csv"), scored.with_name(scored.stem + ".errors.csv")):
        f.unlink(missing_ok=True)
    return out
