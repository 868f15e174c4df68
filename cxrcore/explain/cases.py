"""Cases for a case browser: every image of an evaluation with each model's probabilities, and the
easy / average / hard bucketing (all models right / some right / all wrong at their thresholds) that
the Evaluation page and the LLM explainer share: :func:`bucket` for many images at once,
:func:`classify_case` for one image's label (by the ground truth when known, else by the models'
agreement) — the one case-type rule of the code base."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

def bucket(n_right, n_models: int):
    """"easy" when every model is right, "hard" when none is, "average" otherwise (element-wise)."""
    n_right = np.asarray(n_right)
    out = np.where(n_right == n_models, "easy", np.where(n_right == 0, "hard", "average"))
    return str(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class CaseType:
    """``name``: easy / average / hard; ``basis``: "ground truth" or "agreement"; ``detail``: one sentence
    saying each model's call (and whether it is right, when the truth is known)."""

    name: str
    basis: str
    detail: str
    truth_present: bool | None = None
    right: dict = field(default_factory=dict)   # model -> right? (ground truth basis only)

    @property
    def basis_text(self) -> str:
        if self.basis == "ground truth":
            return "decided by the ground truth"
        return ("decided by the models' agreement: the ground truth is not known, so whether the models are "
                "right is not known either")

    def to_dict(self) -> dict:
        return {"case_type": self.name, "basis": self.basis, "detail": self.detail,
                "ground_truth_present": self.truth_present, "right": self.right}


def classify_case(predictions: dict, label: str, truth_present: bool | None) -> CaseType:
    """The case type of ``label`` for these models' calls (``predictions`` as from
    :meth:`cxrcore.compare.Comparison.for_label`). ``truth_present``: whether the finding is present
    (None: unknown, then the models' agreement decides)."""
    calls = {name: bool(p.positive[p.labels.index(label)]) for name, p in predictions.items() if label in p.labels}
    if not calls:
        raise ConfigError(f"No model has an output for {label!r}; choose another label.")
    said = ", ".join(f"{n} calls it {'present' if c else 'absent'}" for n, c in calls.items())
    lacking = [n for n in predictions if n not in calls]
    if lacking:  # judged on the models that have the label; say so
        said += "; " + ", ".join(lacking) + f" {'has' if len(lacking) == 1 else 'have'} no output for {label}"
    if truth_present is not None:
        right = {n: c == truth_present for n, c in calls.items()}
        name = bucket(sum(right.values()), len(right))
        marks = ", ".join(f"{n} calls it {'present' if c else 'absent'} ({'right' if right[n] else 'wrong'})"
                          for n, c in calls.items())
        marks += "".join(f"; {n} has no output for {label}" for n in lacking)
        return CaseType(name, "ground truth",
                        f"Ground truth: {label} {'present' if truth_present else 'absent'}; {marks}.",
                        truth_present, right)
    if len(set(calls.values())) == 1:
        return CaseType("easy", "agreement", f"No ground truth; the models agree: {said}.")
    return CaseType("average", "agreement", f"No ground truth; the models disagree: {said}, so one of them is wrong.")


def truth_for(truth: list[str] | None, label: str, known: set | None = None) -> bool | None:
    """Whether ``label`` is present according to a list of positive labels (None: unknown). ``known``:
    the labels whose value is known (a case browser's row may leave some unknown); None: all of them."""
    from ..labels import canonical

    if truth is None or (known is not None and canonical(label) not in {canonical(x) for x in known}):
        return None
    return canonical(label) in {canonical(t) for t in truth}


def bucket_names(n_models: int) -> list[str]:
    return ["easy", "average", "hard"] if n_models > 1 else ["easy", "hard"]


def bucket_help(n_models: int) -> dict[str, str]:
    if n_models == 1:
        return {"easy": "model right", "hard": "model wrong"}
    return {"easy": "all models right", "average": "one model right" if n_models == 2 else "some models right",
            "hard": "both models wrong" if n_models == 2 else "all models wrong"}


@dataclass
class Cases:
    """One row per image, one column per label; ``probs`` / ``thresholds``: one entry per model."""

    image_ids: list[str]
    paths: list[str]
    labels: list[str]
    targets: np.ndarray              # (N, L), NaN = unknown
    probs: list[np.ndarray]          # per model (N, L)
    thresholds: list[np.ndarray]     # per model (L,)

    @property
    def n_models(self) -> int:
        return len(self.probs)

    def browsable_labels(self) -> list[str]:
        return [x for j, x in enumerate(self.labels) if np.any(~np.isnan(self.targets[:, j]))]

    def buckets(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows with a known value of ``label``, their bucket)."""
        j = self.labels.index(label)
        t = self.targets[:, j]
        known = np.flatnonzero(~np.isnan(t))
        right = np.stack([(p[known, j] >= thr[j]) == (t[known] == 1) for p, thr in zip(self.probs, self.thresholds)])
        return known, bucket(right.sum(0), self.n_models)

    def in_bucket(self, label: str, name: str) -> np.ndarray:
        """Rows of bucket ``name`` for ``label``, the most wrong first (mean distance of the models'
        probabilities from the truth)."""
        j = self.labels.index(label)
        known, of = self.buckets(label)
        rows = known[of == name]
        err = np.mean([np.abs(p[rows, j] - self.targets[rows, j]) for p in self.probs], axis=0) if len(rows) else rows
        return rows[np.argsort(-err, kind="stable")]

    def truth(self, i: int) -> list[str]:
        return [x for j, x in enumerate(self.labels) if self.targets[i, j] == 1]


def evaluation_cases(result: dict, ev, index, compare_split_ids=None, compare_thresholds: dict | None = None) -> Cases:
    """The cases of an evaluation (``run_evaluation``'s result and EvalData) on ``index``.

    With a comparison, the rows are the images both models were evaluated on
    (``compare_split_ids``: the compared model's image ids when its split differs), the labels the
    shared ones, and ``compare_thresholds`` the compared model's thresholds by its label names."""
    paths = dict(zip(index.frame["image_id"].astype(str), index.frame["path"].astype(str)))
    if ev.compare is None:
        ids = list(ev.image_ids)
        return Cases(ids, [paths.get(x, "") for x in ids], list(ev.labels), ev.targets, [ev.probs], [ev.thresholds])
    ids = list(ev.image_ids)
    if len(ids) != len(ev.compare["targets"]):  # the two splits differ: the shared images, in ev's order
        other = set(compare_split_ids or [])
        ids = [x for x in ids if x in other]
    per = result["comparison"]["per_label"]
    thr_b = compare_thresholds or {}
    labels = list(ev.compare["labels"])
    return Cases(ids, [paths.get(x, "") for x in ids], labels, ev.compare["targets"],
                 [ev.compare["probs_a"], ev.compare["probs_b"]],
                 [np.array([ev.thresholds[ev.labels.index(x)] for x in labels]),
                  np.array([thr_b.get(per[x]["label_compare"], 0.5) for x in labels])])
