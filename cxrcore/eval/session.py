"""The Evaluation page's computation, without Streamlit: one evaluation of a model (optionally compared with
another) on a dataset split, with the cases its browser shows, and whether a model's call on a case is right.

The page only adds widgets, caching and the visitor's heavy-work slot around these calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..explain.cases import Cases, evaluation_cases

if TYPE_CHECKING:
    from ..data.index import DatasetIndex
    from .evaluate import EvalData


def compared_thresholds(card) -> dict[str, float]:
    """The compared model's thresholds by its own label names (0.5 for a label its card has none for)."""
    return dict(zip(card.labels, card.threshold_list()))


def splits_differ(ev: EvalData) -> bool:
    """Whether the compared model was scored on other images than the model: its own split (the seed or method
    of its card) differs, so the case browser shows the images both saw."""
    return ev.compare is not None and len(ev.image_ids) != len(ev.compare["targets"])


def evaluate_with_cases(checkpoint: str | Path, data: str | Path | DatasetIndex, split: str = "test",
                        n_boot: int = 1000, compare_to: str | Path | None = None, *, policy: str | None = None,
                        tta: str = "none", limits=None, load=None, site: str | None = None
                        ) -> tuple[dict, EvalData, Cases]:
    """(result, EvalData, Cases) of :func:`cxrcore.eval.evaluate.run_evaluation` on ``split`` of ``data``, and
    with ``compare_to`` the paired comparison; ``policy`` "" or None: each model's own training policy.

    The cases carry the compared model's thresholds (by its label names) and, when :func:`splits_differ`, the
    images of its own split: predicted again (from the workspace's prediction cache after the evaluation) with
    ``load(compare_to)`` (default: a new :class:`cxrcore.predictor.Predictor`; the app passes its cached one).
    ``site``: the model (not the compared one) as used at that site (its profile's thresholds and temperatures)."""
    # the model code is imported when an evaluation runs, not with the page that shows its widgets
    from ..checkpoint import read_card
    from ..data.index import DatasetIndex
    from ..data.readers import read_dataset
    from .evaluate import run_evaluation
    from .predictions import predict_split

    index = data if isinstance(data, DatasetIndex) else read_dataset(data)
    result, ev = run_evaluation(checkpoint, index, split, n_boot, compare_to, policy=policy or None, tta=tta,
                                limits=limits, site=site)
    other_ids, other_thr = None, None
    if ev.compare is not None:
        other_thr = compared_thresholds(read_card(compare_to))
        if splits_differ(ev):
            if load is None:
                from ..predictor import Predictor

                load = Predictor
            other_ids = predict_split(load(compare_to), index, split, limits=limits).image_ids
    return result, ev, evaluation_cases(result, ev, index, other_ids, other_thr)


def call_is_right(prob: float, threshold: float, positive: bool) -> bool:
    """Whether a model's call (positive at or above its threshold) agrees with the truth (``positive``)."""
    return bool((prob >= threshold) == bool(positive))
