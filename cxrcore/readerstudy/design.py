"""What a reader study is, declared once: the designs, rating scales and arms, and the set-up a study is created
with (:class:`StudyDesign`). The page's set-up form, ``cxr reader-study create`` and the store read these.

Designs (the standard ones of MRMC observer studies):

- ``unaided``: every case read once, without the model (a baseline of the readers alone).
- ``sequential``: every case read unaided, then at once with the model's output shown; both ratings are kept, and
  the unaided one is locked from the moment the aided view is shown.
- ``crossover``: two sessions separated by a wash-out; in session 1 half the cases are read aided and half
  unaided, in session 2 each case the other way (which half comes aided first alternates between readers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from ..errors import ConfigError

DESIGNS = {
    "unaided": "unaided only: each case read once, without the model",
    "sequential": "sequential aided: each case read unaided, then with the model's output (both ratings kept)",
    "crossover": "crossover: two sessions after a wash-out, half the cases aided in each",
}
ARMS = ("unaided", "aided")
# name -> (lowest, highest, what the reader is asked)
SCALES = {
    "0-100": (0, 100, "confidence that the finding is present, 0 (surely absent) to 100 (surely present)"),
    "5-point": (1, 5, "1 definitely absent · 2 probably absent · 3 possibly present · 4 probably present · "
                      "5 definitely present"),
}
# A reader's own call (for sensitivity, specificity and kappa): rating at or above this.
CALL_AT = {"0-100": 50, "5-point": 3}
HEATMAPS = ("gradcam", "none")
class ExportFormat(NamedTuple):
    title: str        # the download button's
    suffix: str       # of the file name
    mime: str
    what: str


# What a study's answers are exported as (cxrcore.readerstudy.analysis.export; the CLI's --format, the page's buttons).
EXPORT_FORMATS = {
    "long": ExportFormat("Ratings (long CSV)", ".csv", "text/csv",
                         "the ratings in the long format: reader, modality, case, truth, rating (the model as reader "
                         "'model')"),
    "imrmc": ExportFormat("Ratings (iMRMC)", ".imrmc", "text/plain",
                          "iMRMC's input file (readers' names made safe for it)"),
    "audit": ExportFormat("Audit trail (CSV)", "-audit.csv", "text/csv",
                          "every answer given, in order, changed ones included: reader, case, source image, arm, "
                          "session, rating, mark, when (UTC), reading seconds, revision"),
}
MAX_CASES = 2000
MAX_FINDINGS = 14


def arms_of(design: str) -> tuple[str, ...]:
    """The arms a design reads (``unaided`` alone, or both)."""
    return ("unaided",) if design == "unaided" else ARMS


@dataclass(frozen=True)
class StudyDesign:
    """A study's set-up, fixed when it is created and recorded with it."""

    name: str
    findings: tuple[str, ...]
    design: str = "sequential"
    scale: str = "0-100"
    mark_location: bool = False       # readers click where the finding is (hit rate against ground-truth boxes)
    model: str | None = None          # checkpoint (folder or library name) whose output the aided arm shows
    heatmap: str = "gradcam"          # what the aided arm overlays
    washout_days: float = 28.0        # crossover: days between a reader's two sessions
    seed: int = 0                     # case order per reader: a permutation seeded by (seed, reader number)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def check(self) -> "StudyDesign":
        problems = []
        if not self.name.strip():
            problems.append("the study needs a name")
        if not self.findings:
            problems.append("choose at least one finding to read")
        if len(self.findings) > MAX_FINDINGS:
            problems.append(f"at most {MAX_FINDINGS} findings per study")
        if len(set(self.findings)) != len(self.findings):
            problems.append("a finding is listed twice")
        if self.design not in DESIGNS:
            problems.append(f"design {self.design!r} is not one of {', '.join(DESIGNS)}")
        if self.scale not in SCALES:
            problems.append(f"scale {self.scale!r} is not one of {', '.join(SCALES)}")
        if self.heatmap not in HEATMAPS:
            problems.append(f"heatmap {self.heatmap!r} is not one of {', '.join(HEATMAPS)}")
        if self.design != "unaided" and not self.model:
            problems.append(f"a {self.design} design shows a model's output: choose the model")
        if not (0 <= float(self.washout_days) <= 365):
            problems.append("the wash-out is between 0 and 365 days")
        if problems:
            raise ConfigError("The study cannot be set up: " + "; ".join(problems) + ".")
        return self

    @property
    def arms(self) -> tuple[str, ...]:
        return arms_of(self.design)

    @property
    def scale_range(self) -> tuple[int, int]:
        lo, hi, _ = SCALES[self.scale]
        return lo, hi

    def to_dict(self) -> dict:
        d = asdict(self)
        d["findings"] = list(self.findings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StudyDesign":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["findings"] = tuple(known.get("findings") or ())
        return cls(**known)
