"""A site profile fitted on a reader study's cases and their truth (issue 23 §1: "reader-study truth"): the site's
own films, read and confirmed there. ``cxr site fit --reader-study STUDY``. Here, not in ``cxrcore.eval.site``: the
study store stands on a floor above the evaluation code."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.imageio import read_image
from ..errors import DataError
from ..eval.site import DEFAULT_STRATEGY, SiteProfile, fit_site
from ..labels import match_labels
from ..predictor import Predictor
from .store import StudyStore


def fit_site_on_study(checkpoint, study_id: str, name: str, *, strategy: str = DEFAULT_STRATEGY,
                      target: float | None = None, n_boot: int = 200, seed: int = 0, store=None,
                      progress=None) -> SiteProfile:
    """:func:`fit_site` on a reader study's cases and their truth (the site's own films, read and confirmed there):
    each case's image predicted, each of the study's findings matched to the model's label of that name (through
    synonyms); the model's other labels have no truth here and are not fitted. The bootstrap draws cases."""
    store = store or StudyStore()
    study = store.study(study_id)
    cases = store.cases(study_id)
    predictor = Predictor(checkpoint)
    labels = list(predictor.labels)
    findings = list(study.design.findings)
    matched = match_labels(findings, labels)   # model label index -> finding index
    if not matched:
        raise DataError(f"The study's findings ({', '.join(findings)}) match none of the model's labels; a site "
                        "profile needs truth for at least one of them.")
    squares = []
    for k, case in enumerate(cases):
        squares.append(predictor.prep.square(read_image(Path(case.image).read_bytes(), Path(case.image).name).pixels))
        if progress:
            progress(k + 1, len(cases))
    probs = predictor.predict_squares(np.stack(squares)) if squares else np.zeros((0, len(labels)))
    targets = np.full((len(cases), len(labels)), np.nan)
    for j, f in matched.items():
        targets[:, j] = [float(c.truth[findings[f]]) if c.truth.get(findings[f]) is not None else np.nan
                         for c in cases]
    return fit_site(name, labels, targets, probs, predictor.card.thresholds,
                    fitted_on=f"reader study {study.name} ({len(cases)} cases; truth of {', '.join(findings)})",
                    strategy=strategy, target=target, n_boot=n_boot, seed=seed)
