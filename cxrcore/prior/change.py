"""A current film against the same patient's prior: per-label change, its uncertainty and a call, with the
registered pair, the subtraction and the heatmap-change maps.

Both films go through the ordinary pipeline (:func:`cxrcore.compare.compare`: the out-of-distribution check, the
model's probabilities and heatmaps, optionally Monte-Carlo dropout with test-time augmentation). The probabilities
are the model's on each film as it was taken (registration does not touch what the model sees); registration
(:mod:`.register`) aligns the prior to the current film for the pictures: the subtraction image and, per label,
the current heatmap minus the registered prior's, each weighted by its film's probability (a Grad-CAM map is
scaled to its own peak, so an unweighted difference would show a confident "nothing" as much as a finding).

The call for a label (one of :data:`cxrcore.labels.CHANGES`) reads Δp = p(current) − p(prior) against the label's
change threshold τ (:meth:`cxrcore.models.card.Card.change_threshold_list`, tuned on phantom pairs by ``cxr
eval-change --tune``) and the probability t from which the finding counts as there (:func:`presence`: the
card's or the site's decision threshold, at most 0.5):

- Δp ≥ τ: ``new`` when the prior was below t and the current is at or above it; ``worse`` when both are at or
  above t; ``unchanged`` when both stay below t (more likely, still not called present);
- Δp ≤ −τ: ``resolved`` when the current fell below t; ``better`` when both stay at or above; else unchanged;
- |Δp| < τ: ``unchanged``.

With Monte-Carlo passes the spread of Δp is the two films' spreads combined (independent passes): sd(Δp) =
√(sd_prior² + sd_current²); a call is ``confident`` when Δp ± 1.96 sd stays on one side of τ.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..compare import Comparison, compare
from ..data.imageio import LoadedImage
from ..labels import CHANGES
from ..predictor import Predictor
from .register import Registration, matched_subtraction, register

DEFAULT_CHANGE_THRESHOLD = 0.1   # τ of a label never tuned (cxr eval-change --tune --save)
Z = 1.96


def presence(threshold: float) -> float:
    """The probability from which a change call counts a finding as there: the decision threshold, or 0.5 where the
    threshold is higher (a threshold set high for specificity would otherwise call a finding the model finds more
    likely than not "absent" on both films, and a resolved one "unchanged")."""
    return min(float(threshold), 0.5)


def call(p_prior: float, p_current: float, threshold: float, change_threshold: float) -> str:
    """The change call of one label (see the module's docstring)."""
    d = p_current - p_prior
    threshold = presence(threshold)
    if d >= change_threshold:
        if p_prior >= threshold:
            return "worse"
        return "new" if p_current >= threshold else "unchanged"
    if d <= -change_threshold:
        if p_current >= threshold:
            return "better"
        return "resolved" if p_prior >= threshold else "unchanged"
    return "unchanged"


def rounded(row: dict, digits: int) -> dict:
    """A row of :meth:`PriorComparison.rows` with its numbers (and the interval's) rounded to ``digits``."""
    return {k: (round(v, digits) if isinstance(v, float) else
                [round(u, digits) for u in v] if isinstance(v, list) else v) for k, v in row.items()}


def calls(p_prior: np.ndarray, p_current: np.ndarray, thresholds: np.ndarray, change_thresholds: np.ndarray
          ) -> list[str]:
    return [call(float(a), float(b), float(t), float(c))
            for a, b, t, c in zip(p_prior, p_current, thresholds, change_thresholds)]


@dataclass
class PriorComparison:
    """One model's reading of a pair of films of one patient."""
    labels: list[str]
    model: str
    prior: Comparison
    current: Comparison
    delta: np.ndarray                      # (L,) p(current) - p(prior)
    delta_sd: np.ndarray | None            # (L,) with Monte-Carlo passes
    thresholds: np.ndarray                 # (L,) decision thresholds t
    change_thresholds: np.ndarray          # (L,) τ
    tuned: bool                            # whether τ was tuned for this model (else the default for every label)
    calls: list[str]
    registration: Registration
    subtraction: np.ndarray                # current minus the registered prior (grey levels matched), current frame
    change_maps: np.ndarray                # (L, h, w) current heatmap minus the registered prior's, each weighted by
                                           # its film's probability (a heatmap is scaled to its own peak), -1..1
    seconds: dict = field(default_factory=dict)

    def prediction(self, which: str):
        """The model's :class:`~cxrcore.predictor.Prediction` of the ``prior`` or the ``current`` film."""
        return next(iter((self.prior if which == "prior" else self.current).predictions.values()))

    def p(self, which: str) -> np.ndarray:
        return self.prediction(which).probs

    def notices(self) -> list:
        """The warnings of both films' predictions (:class:`cxrcore.explain.trust.Notice`), each once."""
        return list({w.text: w for which in ("prior", "current") for w in self.prediction(which).warnings}.values())

    def confident(self) -> list[bool | None]:
        """Per label: whether Δp ± 1.96 sd stays on one side of τ (None without Monte-Carlo passes)."""
        if self.delta_sd is None:
            return [None] * len(self.labels)
        lo, hi = np.abs(self.delta) - Z * self.delta_sd, np.abs(self.delta) + Z * self.delta_sd
        return [bool(a >= c or b < c) for a, b, c in zip(lo, hi, self.change_thresholds)]

    def changed(self) -> list[str]:
        """The labels called anything but unchanged, largest |Δp| first."""
        order = np.argsort(-np.abs(self.delta))
        return [self.labels[i] for i in order if self.calls[i] != "unchanged"]

    def rows(self) -> list[dict]:
        """One row per label (the page's table, the LLM's input)."""
        conf = self.confident()
        pp, pc = self.p("prior"), self.p("current")
        out = []
        for i, x in enumerate(self.labels):
            row = {"label": x, "prior": float(pp[i]), "current": float(pc[i]), "delta": float(self.delta[i]),
                   "call": self.calls[i], "threshold": float(self.thresholds[i]),
                   "change_threshold": float(self.change_thresholds[i])}
            if self.delta_sd is not None:
                row.update(delta_sd=float(self.delta_sd[i]),
                           interval=[float(self.delta[i] - Z * self.delta_sd[i]),
                                     float(self.delta[i] + Z * self.delta_sd[i])],
                           confident=conf[i])
            out.append(row)
        return out

    def to_dict(self) -> dict:
        """The answer of ``cxr prior --json``: ``labels`` → {prior, current, delta, call, ...}, ``registration``."""
        labels = {}
        for row in self.rows():
            x = row.pop("label")
            labels[x] = rounded(row, 4)
        mc = self.prediction("current").mc
        return {"labels": labels, "registration": self.registration.to_dict(), "model": self.model,
                "changed": self.changed(), "calls": list(CHANGES),
                "change_thresholds": "tuned" if self.tuned else f"default {DEFAULT_CHANGE_THRESHOLD} (not tuned)",
                "uncertainty": None if mc is None else {k: mc[k] for k in ("samples", "dropout_p", "tta", "kind", "note")},
                "out_of_distribution": {"prior": self.prior.ood.to_dict() if self.prior.ood else None,
                                        "current": self.current.ood.to_dict() if self.current.ood else None},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def compare_prior(prior: LoadedImage, current: LoadedImage, predictor: Predictor, name: str = "model", *,
                  prior_raw: bytes | None = None, current_raw: bytes | None = None, mc_samples: int = 0,
                  mc_seed: int = 0, heatmaps: bool = True, deformable: bool = True,
                  registration: Registration | None = None, locks: dict | None = None) -> PriorComparison:
    """Read ``prior`` and ``current`` (two films of one patient) with ``predictor`` and compare them (the module's
    docstring). ``mc_samples`` > 0: Monte-Carlo dropout with test-time augmentation on both films, for sd(Δp).
    ``registration``: one already computed for these two films (the page registers once for several models).
    ``locks``: a lock per model name, held around each film's prediction (the REST service bounds compute so)."""
    t0 = time.perf_counter()
    a = compare(prior, {name: predictor}, "prior", raw=prior_raw, mc_samples=mc_samples, mc_seed=mc_seed,
                mc_tta=bool(mc_samples), heatmaps=heatmaps, locks=locks)
    b = compare(current, {name: predictor}, "current", raw=current_raw, mc_samples=mc_samples, mc_seed=mc_seed + 1,
                mc_tta=bool(mc_samples), heatmaps=heatmaps, locks=locks)
    t1 = time.perf_counter()
    reg = registration or register(prior.pixels, current.pixels, deformable=deformable)
    t2 = time.perf_counter()
    pa, pb = a.predictions[name], b.predictions[name]
    card = predictor.card
    tau = np.array(card.change_threshold_list(DEFAULT_CHANGE_THRESHOLD), dtype=np.float32)
    thr = pb.thresholds
    delta = (pb.probs - pa.probs).astype(np.float32)
    sd = (np.sqrt(pa.prob_var + pb.prob_var).astype(np.float32)
          if pa.prob_var is not None and pb.prob_var is not None else None)
    if heatmaps and pa.heatmaps.size and pb.heatmaps.size:
        shape = pb.heatmaps.shape[1:]
        inside = np.clip(reg.warp(np.ones(reg.prior_shape, np.float32), shape, order=0), 0, 1)
        maps = np.stack([pb.probs[i] * pb.heatmaps[i] - pa.probs[i] * np.clip(reg.warp(pa.heatmaps[i], shape), 0, 1)
                         * inside for i in range(len(predictor.labels))]).astype(np.float32)
    else:
        maps = np.zeros((len(predictor.labels), 0, 0), np.float32)
    sub = matched_subtraction(current.pixels, reg)
    t3 = time.perf_counter()
    return PriorComparison(list(predictor.labels), name, a, b, delta, sd, thr, tau, card.change_tuned,
                           calls(pa.probs, pb.probs, thr, tau), reg, sub, maps,
                           {"predict": t1 - t0, "register": t2 - t1, "maps": t3 - t2})
