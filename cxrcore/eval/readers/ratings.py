"""The ratings of a reader study: read, validate and export them.

The input is the long format of MRMC tools: one row per (reader, modality, case) with the case's truth and the
reader's rating, columns ``reader, modality, case, truth, rating`` (``treatment`` is accepted for ``modality``,
as RJafroc names it; ``readerid`` / ``caseid`` / ``modalityid`` / ``score`` too; headers are case-insensitive;
other columns are ignored). Truth is 0 (negative) or 1 (positive) per case; a higher rating means more
confidence that the case is positive.

Ids (readers, modalities, cases) are strings and keep the order in which they first appear in the file (not
sorted): a study's modalities are reported in the order the file lists them, and a pair ``"A - B"`` is the
earlier minus the later one.

Bad input raises :class:`~cxrcore.errors.DataError` naming the offending CSV lines (1-based, the header is line
1; at most ten are listed) and saying what to do. Situations where some analysis still applies (one reader, a
reader with one constant rating) are not errors: they are returned as notes.

Exports: the same long CSV (:func:`to_long_csv`) and the input file of the FDA's iMRMC program
(:func:`to_imrmc`): free-text header lines, ``NR:``/``N0:``/``N1:``/``NM:`` counts, a line ``BEGIN DATA:``,
then comma-separated rows ``readerID,caseID,modalityID,score``: one truth row per case with readerID ``-1``,
modalityID ``truth`` and score 0 or 1, then one row per rating (as ``src/mrmc/core/InputFile.java`` of
DIDSR/iMRMC reads it; the iMRMC R package's ``undoIMRMCdf`` documents the truth rows the same way).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ...errors import ConfigError, DataError

COLUMNS = ("reader", "modality", "case", "truth", "rating")
SYNONYMS = {
    "reader": ("reader", "readerid", "reader_id"),
    "modality": ("modality", "treatment", "modalityid", "modality_id"),
    "case": ("case", "caseid", "case_id"),
    "truth": ("truth",),
    "rating": ("rating", "score"),
}
MAX_LISTED = 10
IMRMC_TRUTH_READER = "-1"


@dataclass(frozen=True)
class ReaderStudy:
    """A fully crossed reader study: ``ratings[modality, reader, case]``, ``truth[case]`` (0/1), the ids in
    first-seen order, and optionally a standalone model's score per case (``model``, named ``model_name``: the
    ratings of the reader id given as the model, taken out of the reader panel)."""

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray                     # (K,) int 0/1
    ratings: np.ndarray                   # (T, R, K) float
    model: np.ndarray | None = None       # (K,) float
    model_name: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    source: str | None = None

    @property
    def n_positive(self) -> int:
        return int(self.truth.sum())

    @property
    def n_negative(self) -> int:
        return int(len(self.truth) - self.truth.sum())

    def to_frame(self, include_model: bool = True) -> pd.DataFrame:
        """The long table: modality-major, then reader, then case, so reading it back keeps every id's order;
        the model (if any) as one more reader, its scores repeated in every modality."""
        T, R, K = self.ratings.shape
        readers = list(self.readers)
        values = self.ratings
        if include_model and self.model is not None:
            readers.append(self.model_name)
            values = np.concatenate([values, np.broadcast_to(self.model, (T, 1, K))], axis=1)
        R2 = len(readers)
        return pd.DataFrame({
            "reader": np.tile(np.repeat(np.array(readers, dtype=object), K), T),
            "modality": np.repeat(np.array(self.modalities, dtype=object), R2 * K),
            "case": np.tile(np.array(self.cases, dtype=object), T * R2),
            "truth": np.tile(self.truth, T * R2).astype(int),
            "rating": values.reshape(-1),
        })


def _listed(items: list, total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    return shown + (f" and {total - MAX_LISTED} more" if total > MAX_LISTED else "")


def _lines(index: Iterable[int]) -> str:
    lines = [int(i) + 2 for i in index]     # line 1 is the header
    return ("line " if len(lines) == 1 else "lines ") + _listed(lines)


def _short(value) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return repr(text if len(text) <= 20 else text[:17] + "...")


def _columns(df: pd.DataFrame, where: str) -> dict[str, str]:
    """Our column name -> the file's column name."""
    lower: dict[str, str] = {}
    for c in df.columns:
        key = str(c).strip().lower()
        if key in lower:
            raise DataError(f"{where}: the header names column {key!r} twice ({lower[key]!r} and {c!r}); "
                            "headers are case-insensitive: rename or remove one of them.")
        lower[key] = c
    found, missing = {}, []
    for col in COLUMNS:
        name = next((s for s in SYNONYMS[col] if s in lower), None)
        if name is None:
            missing.append(col)
        else:
            found[col] = lower[name]
    if missing:
        raise DataError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(map(str, df.columns)) or 'none'}). A ratings file needs the columns reader, "
            "modality (or treatment), case, truth and rating, one row per reader, modality and case "
            "(headers are case-insensitive; other columns are ignored).")
    return found


def _read_frame(source, where: str) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True).astype(object)
    try:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise DataError(f"{where}: no such file. Give the path of a CSV file of ratings.")
            text = path.read_text(encoding="utf-8-sig")
        else:                               # an open file (text or bytes)
            text = source.read()
            if isinstance(text, bytes):
                text = text.decode("utf-8-sig")
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except DataError:
        raise
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{where}: not a readable CSV file ({exc}). Save the ratings as a comma-separated "
                        "UTF-8 text file with a header line.") from None


def read_ratings(source, model_reader: str | None = None, name: str | None = None) -> ReaderStudy:
    """A :class:`ReaderStudy` from a CSV path, an open file or a DataFrame in the long format.

    ``model_reader``: the reader id whose rows are a standalone model's scores; they are taken out of the
    reader panel (one score per case: if the model has rows in several modalities they must agree)."""
    where = name or (str(source) if isinstance(source, (str, Path)) else "ratings")
    raw = _read_frame(source, where)
    cols = _columns(raw, where)
    df = pd.DataFrame({c: raw[cols[c]] for c in COLUMNS})
    for c in ("reader", "modality", "case"):
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
    blank = df[(df[["reader", "modality", "case"]] == "").all(axis=1)
               & df["truth"].map(lambda v: str(v).strip() in ("", "nan", "None"))
               & df["rating"].map(lambda v: str(v).strip() in ("", "nan", "None"))]
    df = df.drop(index=blank.index)         # empty lines; the others keep their line numbers
    if df.empty:
        raise DataError(f"{where}: no ratings (the file has a header but no rows). Add one row per reader, "
                        "modality and case.")

    for c in ("reader", "modality", "case"):
        bad = df.index[df[c] == ""]
        if len(bad):
            raise DataError(f"{where}: {len(bad)} row{'s have' if len(bad) > 1 else ' has'} an empty {c} "
                            f"({_lines(bad)}). Every row needs a reader, a modality and a case id.")

    rating = pd.to_numeric(df["rating"].map(lambda v: str(v).strip()), errors="coerce")
    bad = df.index[~np.isfinite(rating.to_numpy(dtype=float, na_value=np.nan))]
    if len(bad):
        shown = ", ".join(f"line {i + 2}: {_short(df.at[i, 'rating'])}" for i in bad[:MAX_LISTED])
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataError(f"{where}: {len(bad)} rating{'s are' if len(bad) > 1 else ' is'} not a number "
                        f"({shown}{more}). Every rating must be a finite number (higher = more confident "
                        "the case is positive); fix or remove these rows.")
    df["rating"] = rating.astype(float)

    truth = pd.to_numeric(df["truth"].map(lambda v: str(v).strip()), errors="coerce")
    bad = df.index[~truth.isin([0, 1])]
    if len(bad):
        shown = ", ".join(f"line {i + 2}: {_short(df.at[i, 'truth'])}" for i in bad[:MAX_LISTED])
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataError(f"{where}: truth must be 0 (negative) or 1 (positive); {len(bad)} "
                        f"row{'s have' if len(bad) > 1 else ' has'} another value ({shown}{more}).")
    df["truth"] = truth.astype(int)

    conflicts = df.groupby("case", sort=False)["truth"].nunique()
    conflicts = conflicts[conflicts > 1]
    if len(conflicts):
        parts = []
        for case in conflicts.index[:MAX_LISTED]:
            rows = df[df["case"] == case]
            by = {t: rows.index[rows["truth"] == t] for t in (0, 1)}
            parts.append(f"case {case!r}: truth 0 on {_lines(by[0])}, 1 on {_lines(by[1])}")
        more = f"; and {len(conflicts) - MAX_LISTED} more cases" if len(conflicts) > MAX_LISTED else ""
        raise DataError(f"{where}: {len(conflicts)} case{'s have' if len(conflicts) > 1 else ' has'} different "
                        f"truth on different rows ({'; '.join(parts)}{more}). A case's truth is one fact: "
                        "give it the same 0/1 on every row.")

    dup = df[df.duplicated(["reader", "modality", "case"], keep=False)]
    if len(dup):
        groups = list(dup.groupby(["reader", "modality", "case"], sort=False))
        parts = [f"reader {r!r}, modality {m!r}, case {c!r} on {_lines(g.index)}"
                 for (r, m, c), g in groups[:MAX_LISTED]]
        more = f"; and {len(groups) - MAX_LISTED} more" if len(groups) > MAX_LISTED else ""
        raise DataError(f"{where}: {len(groups)} (reader, modality, case) "
                        f"{'combinations appear' if len(groups) > 1 else 'combination appears'} more than once "
                        f"({'; '.join(parts)}{more}). Each reader rates each case once per modality: "
                        "keep one row of each.")

    notes: list[str] = []
    model = None
    mrows = df.iloc[:0]
    if model_reader is not None:
        model_reader = str(model_reader).strip()
        mrows = df[df["reader"] == model_reader]
        if mrows.empty:
            readers = list(dict.fromkeys(df["reader"]))
            raise DataError(f"{where}: no rows for the model reader {model_reader!r} (readers in the file: "
                            f"{_listed(readers)}). Name the reader id that holds the model's scores.")
        df = df[df["reader"] != model_reader]
        spread = mrows.groupby("case", sort=False)["rating"].agg(lambda s: s.max() - s.min())
        differ = list(spread.index[spread > 0])
        if differ:
            raise DataError(f"{where}: the model {model_reader!r} has different scores for the same case in "
                            f"different modalities (cases {_listed(differ)}). A standalone model gives one "
                            "score per case: keep its rows in one modality, or make them agree.")
        if df.empty:
            raise DataError(f"{where}: the only reader is the model {model_reader!r}; a reader study needs "
                            "at least one human reader besides it.")

    both = pd.concat([df, mrows])
    modalities = tuple(dict.fromkeys(df["modality"]))
    readers = tuple(dict.fromkeys(df["reader"]))
    cases = tuple(dict.fromkeys(both["case"]))
    truth = both.groupby("case", sort=False)["truth"].first().reindex(list(cases)).to_numpy(dtype=int)

    # fully crossed: every reader rates every case in every modality
    missing = []
    have = df.groupby(["modality", "reader"], sort=False)["case"].agg(set)
    all_cases = set(cases)
    for m in modalities:
        for r in readers:
            got = have.get((m, r), set())
            if len(got) < len(all_cases):
                lack = [c for c in cases if c not in got]
                missing.append((m, r, lack))
    if missing:
        parts = [f"reader {r!r} in modality {m!r} lacks {len(lack)} of the {len(cases)} cases "
                 f"({_listed(lack)})" for m, r, lack in missing[:MAX_LISTED]]
        more = f"; and {len(missing) - MAX_LISTED} more reader-modality pairs" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{where}: the design is not fully crossed: {'; '.join(parts)}{more}. The analysis needs "
                        "every reader to rate every case in every modality: add the missing ratings, or remove "
                        "those cases (or that reader) from the file for everyone.")
    if model_reader is not None:
        model_scores = mrows.groupby("case", sort=False)["rating"].first()
        lack = [c for c in cases if c not in model_scores.index]
        if lack:
            raise DataError(f"{where}: the model {model_reader!r} has no score for {len(lack)} of the "
                            f"{len(cases)} cases ({_listed(lack)}). It needs a score for every case the readers "
                            "rated.")
        model = model_scores.reindex(list(cases)).to_numpy(dtype=float)

    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == len(truth):
        which = "1 (positive)" if n_pos else "0 (negative)"
        raise DataError(f"{where}: all {len(truth)} cases have truth {which}. AUROC compares positive with "
                        "negative cases: the study needs cases of both kinds.")
    if min(n_pos, len(truth) - n_pos) < 2:
        raise DataError(f"{where}: {n_pos} positive and {len(truth) - n_pos} negative cases. The variance of an "
                        "AUROC (jackknife or DeLong) needs at least 2 cases of each kind: add cases.")

    T, R, K = len(modalities), len(readers), len(cases)
    mi = {m: i for i, m in enumerate(modalities)}
    ri = {r: i for i, r in enumerate(readers)}
    ci = {c: i for i, c in enumerate(cases)}
    ratings = np.full((T, R, K), np.nan)
    ratings[df["modality"].map(mi).to_numpy(), df["reader"].map(ri).to_numpy(),
            df["case"].map(ci).to_numpy()] = df["rating"].to_numpy(dtype=float)

    if R == 1:
        notes.append(f"only one reader ({readers[0]!r}): the random-reader analyses (RRRC, RRFC) need at least "
                     "2 readers and are not given; the fixed-reader random-case analysis (FRRC) and the "
                     "per-reader results apply to this reader only.")
    for m in modalities:
        for r in readers:
            values = ratings[mi[m], ri[r]]
            if np.all(values == values[0]):
                notes.append(f"reader {r!r} gave every case the same rating ({values[0]:g}) in modality {m!r}: "
                             "its AUROC is 0.5 (no discrimination), which is correct for constant ratings.")
    if model is not None and np.all(model == model[0]):
        notes.append(f"the model {model_reader!r} gives every case the same score ({model[0]:g}): its AUROC is 0.5.")
    return ReaderStudy(modalities, readers, cases, truth, ratings, model, model_reader, tuple(notes), where)


def _number(x: float) -> str:
    """A rating as text that reads back to the same float: integers without a decimal point."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)


def to_long_csv(study: ReaderStudy, path: str | Path | None = None, include_model: bool = True) -> str:
    """The long CSV (reader, modality, case, truth, rating) as text; also written to ``path`` if given.
    Reading it back (with ``model_reader=study.model_name`` when there is a model) gives the same study."""
    df = study.to_frame(include_model)
    df["rating"] = df["rating"].map(_number)
    text = df.to_csv(index=False, lineterminator="\n")
    if path is not None:
        Path(path).write_text(text)
    return text


def to_imrmc(study: ReaderStudy, path: str | Path | None = None, include_model: bool = False) -> str:
    """The study as an iMRMC input file (text; also written to ``path`` if given). The model is left out by
    default: iMRMC would treat it as one more human reader."""
    df = study.to_frame(include_model)
    ids = {"reader": list(dict.fromkeys(df["reader"])), "modality": list(study.modalities), "case": list(study.cases)}
    bad = {k: [v for v in vs if "," in v or any(ch.isspace() for ch in v) or v == ""] for k, vs in ids.items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise ConfigError("iMRMC reads comma-separated fields and deletes white space inside them, so these ids "
                          "would change or split: " + "; ".join(f"{k} {_listed([repr(x) for x in v])}"
                                                             for k, v in bad.items())
                          + ". Rename them (no commas or spaces) before exporting to iMRMC.")
    reserved = [r for r in ids["reader"] if r in (IMRMC_TRUTH_READER, "truth")]
    if reserved:
        raise ConfigError(f"iMRMC reserves reader ids '-1' and 'truth' for truth rows; rename reader "
                          f"{reserved[0]!r} before exporting to iMRMC.")
    out = io.StringIO()
    out.write("iMRMC input file written by cxr reader-study (cxrcore.eval.readers)\n")
    out.write(f"NR: {len(ids['reader'])}\n")
    out.write(f"N0: {study.n_negative}\n")
    out.write(f"N1: {study.n_positive}\n")
    out.write(f"NM: {len(study.modalities)}\n")
    out.write("BEGIN DATA:\n")
    for case, t in zip(study.cases, study.truth):
        out.write(f"{IMRMC_TRUTH_READER},{case},truth,{int(t)}\n")
    for r, c, m, s in zip(df["reader"], df["case"], df["modality"], df["rating"]):
        out.write(f"{r},{c},{m},{_number(s)}\n")
    text = out.getvalue()
    if path is not None:
        Path(path).write_text(text)
    return text
