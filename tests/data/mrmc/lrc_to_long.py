"""Convert the MRMC ``.lrc`` files here into the long CSV format (reader, modality, case, truth, rating).

Run from the repository root: ``python tests/data/mrmc/lrc_to_long.py``; it rewrites ``vandyke.csv``,
``franken.csv``, ``fed.csv`` and ``nico_cad.csv`` from ``VD.lrc``, ``Franken.lrc``, ``FED.lrc`` and ``NICO.lrc``
(see README.md for where each file comes from). The tests read the CSVs; this script documents (and reproduces)
how they were made.

The LRC format (OR-DBM MRMC, University of Iowa; also read by RJafroc's ``DfReadDataFile``): a title line; then,
for each reader, a line with the reader's id, a block of non-diseased (truth 0) case rows, a line ``*``, a block of
diseased (truth 1) case rows and a line ``*``; a final ``#``. Right after the first reader's id come one line
with the modality names (quoted) and one with each modality's rating direction (``L``: a larger rating means
more confidence the case is diseased; every file here uses ``L``). A case row holds one rating per modality,
optionally followed by a case id (``VD.lrc``) or a free-text label (``Non-diseased case 5``): cases are the same
in every reader's block, in the same order, so a case is identified by its block and its position there.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_lrc(path: Path) -> tuple[list[str], list[dict]]:
    """(modality names, rows {reader, modality, case, truth, rating}) of one LRC file; case ids from the
    file where it has them (a number after the ratings), else ``n<i>`` / ``d<i>`` by position in the block."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    i = 1                                   # line 0 is the title
    modalities: list[str] | None = None
    rows: list[dict] = []
    while i < len(lines) and lines[i] != "#":
        reader = lines[i]
        i += 1
        if modalities is None:
            modalities = re.findall(r'"([^"]*)"', lines[i])
            directions = lines[i + 1].split()
            assert directions == ["L"] * len(modalities), directions
            i += 2
        for truth in (0, 1):
            pos = 0
            while lines[i] != "*":
                fields = lines[i].split()
                ratings = fields[:len(modalities)]
                rest = fields[len(modalities):]
                pos += 1
                case = rest[0] if len(rest) == 1 and rest[0].isdigit() else f"{'nd'[truth]}{pos}"
                for m, r in zip(modalities, ratings):
                    value = float(r)
                    rows.append({"reader": reader, "modality": m, "case": case, "truth": truth,
                                 "rating": int(value) if value.is_integer() else value})
                i += 1
            i += 1                          # the "*"
    return modalities or [], rows


def write(rows: list[dict], out: Path, rename_readers: dict[str, str] | None = None) -> None:
    rename_readers = rename_readers or {}
    # modality-major, then reader, then case: the first-seen order of every id is the file's own order
    order = {k: {v: n for n, v in enumerate(dict.fromkeys(r[k] for r in rows))} for k in ("modality", "reader", "case")}
    rows = sorted(rows, key=lambda r: (order["modality"][r["modality"]], order["reader"][r["reader"]],
                                       order["case"][r["case"]]))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["reader", "modality", "case", "truth", "rating"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "reader": rename_readers.get(r["reader"], r["reader"])})


def main() -> None:
    write(parse_lrc(HERE / "VD.lrc")[1], HERE / "vandyke.csv")
    write(parse_lrc(HERE / "Franken.lrc")[1], HERE / "franken.csv")
    write(parse_lrc(HERE / "FED.lrc")[1], HERE / "fed.csv")
    # NICO: the first reader is the CAD algorithm, readers 2..10 the nine radiologists (RJafroc dataset09)
    write(parse_lrc(HERE / "NICO.lrc")[1], HERE / "nico_cad.csv",
          {"1": "CAD", **{str(j): f"rad{j - 1}" for j in range(2, 11)}})


if __name__ == "__main__":
    main()
