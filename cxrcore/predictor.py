"""Inference from a checkpoint: probabilities, a Grad-CAM heatmap for every label, boxes.

Everything the predictor needs comes from the checkpoint card (labels, model spec,
preprocessing, thresholds); nothing else is assumed.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Card, infer_trained_on, load_checkpoint
from .data.imageio import LoadedImage, read_image
from .errors import CheckpointError
from .explain.boxes import Box, boxes_from_heatmap
from .explain.cam import fast_cam_check, forward_with_cams, gradcam_loop
from .explain.trust import domain_notices, uncertainty_note
from .models.heads import combine
from .models.registry import model_from_spec


log = logging.getLogger(__name__)

@dataclass
class Prediction:
    labels: list[str]
    probs: np.ndarray                 # (L,)
    thresholds: np.ndarray            # (L,)
    heatmaps: np.ndarray              # (L, h, w) in [0, 1], in the original image's frame (aspect kept)
    boxes: dict[str, list[Box]]       # per label, fractions of the image
    image_shape: tuple[int, int]      # original (height, width)
    seconds: float = 0.0
    cam_method: str = "GradCAM"
    notes: list[str] = field(default_factory=list)
    cam_grid: tuple[int, int] = (0, 0)     # resolution of the feature map the heatmaps come from
    calibrated: np.ndarray | None = None   # (L,) temperature-scaled probabilities, when the card has temperatures
    prob_mean: np.ndarray | None = None    # (L,) Monte-Carlo dropout mean (predict(..., mc_samples > 0))
    prob_std: np.ndarray | None = None     # (L,) Monte-Carlo dropout standard deviation
    prob_var: np.ndarray | None = None     # (L,) Monte-Carlo dropout variance
    mc: dict | None = None                 # {"samples", "dropout_p", "tta", "seed", "kind", "note"} when MC dropout ran
    warnings: list = field(default_factory=list)   # explain.trust.Notice: how (not) to read these outputs
    trained_on: str = ""                   # the card's one-line summary of what the model saw
    site: dict | None = None               # the site profile the thresholds and temperatures are (Card.with_site)

    @property
    def positive(self) -> np.ndarray:
        return self.probs >= self.thresholds

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs)[:k]
        return [(self.labels[i], float(self.probs[i])) for i in order]

    def heatmap(self, label: str) -> np.ndarray:
        return self.heatmaps[self.labels.index(label)]

    def per_label(self) -> dict[str, dict]:
        """Per label: probability, threshold, decision, and when computed the calibrated probability and the
        Monte-Carlo dropout mean / variance / std (the REST answer's ``predictions``, the pages' tables)."""
        out = {}
        for i, x in enumerate(self.labels):
            d = {"probability": float(self.probs[i]), "threshold": float(self.thresholds[i]),
                 "positive": bool(self.positive[i])}
            if self.calibrated is not None:
                d["calibrated"] = float(self.calibrated[i])
            if self.prob_mean is not None:
                d.update(mean=float(self.prob_mean[i]), variance=float(self.prob_var[i]), std=float(self.prob_std[i]))
            out[x] = d
        return out

    def to_dict(self, heatmaps: bool = False) -> dict:
        d = {
            "labels": self.labels,
            "probabilities": {x: float(p) for x, p in zip(self.labels, self.probs)},
            "thresholds": {x: float(t) for x, t in zip(self.labels, self.thresholds)},
            "positive": [x for x, pos in zip(self.labels, self.positive) if pos],
            **({"calibrated_probabilities": {x: float(p) for x, p in zip(self.labels, self.calibrated)}}
               if self.calibrated is not None else {}),
            "boxes": {x: [b.to_dict() for b in bs] for x, bs in self.boxes.items() if bs},
            "image_shape": list(self.image_shape),
            "heatmap_shape": list(self.heatmaps.shape[1:]),
            "cam_grid": list(self.cam_grid),
            "cam_method": self.cam_method,
            "seconds": self.seconds,
            "notes": self.notes,
            "warnings": [w.text for w in self.warnings],
            "warning_codes": [w.code for w in self.warnings],
            "trained_on": self.trained_on,
            "site": self.site,
        }
        if self.prob_mean is not None:
            d["prob_mean"] = {x: float(p) for x, p in zip(self.labels, self.prob_mean)}
            d["prob_std"] = {x: float(p) for x, p in zip(self.labels, self.prob_std)}
            d["prob_var"] = {x: float(p) for x, p in zip(self.labels, self.prob_var)}
            d["mc"] = dict(self.mc or {})
        if heatmaps:
            d["heatmaps"] = {x: np.round(self.heatmaps[i], 4).tolist() for i, x in enumerate(self.labels)}
        return d


def fuse_views(probs: list, how: str = "mean") -> np.ndarray:
    """One study's probabilities from its views' (frontal and lateral; seed 003): their mean or maximum."""
    if how not in ("mean", "max"):
        raise CheckpointError(f"Views are fused by mean or max, not {how!r}.")
    if not probs:
        raise CheckpointError("No view to fuse.")
    stack = np.stack([np.asarray(p, dtype=np.float32) for p in probs])
    return stack.mean(0) if how == "mean" else stack.max(0)


class Predictor:
    """One checkpoint's model, ready for inference; safe to share between threads (the app caches one per
    checkpoint for all its sessions) without a lock. No call changes shared state: the model stays in eval
    mode with no hooks and no gradients (Monte-Carlo dropout and pytorch-grad-cam work on a private view of
    it, :func:`cxrcore.explain.cam.private_view`), no global random state is used, and each call reads the
    card once (:meth:`set_card` between calls is seen by the next call whole)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu"):
        self.path = Path(checkpoint)
        self.card, state = load_checkpoint(checkpoint)
        self.labels = list(self.card.labels)
        self.prep = self.card.prep
        self.device = torch.device(device)
        model = model_from_spec(self.card.model, len(self.labels))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"The weights in {self.path} do not fit the model its card describes "
                                  f"({self.card.model.get('arch')}): {str(exc)[:300]}") from exc
        self.model = model.to(self.device).eval()
        self.fast_cam, self.fast_cam_reason = fast_cam_check(self.model)
        if not self.fast_cam:  # said where the heatmaps are shown (cam_method), and logged
            log.info("%s: per-label Grad-CAM because %s", self.path, self.fast_cam_reason)

    @property
    def name(self) -> str:
        return self.card.name or self.path.name

    @property
    def thresholds(self) -> np.ndarray:
        return np.array(self.card.threshold_list(), dtype=np.float32)

    def at_site(self, site: str | None) -> "Predictor":
        """This model as used at ``site`` (:meth:`cxrcore.models.card.Card.with_site`): a view sharing the network,
        with the site profile's card; this predictor unchanged (several requests, several sites, one model).
        ``None`` or "": this predictor. CheckpointError for a profile the card does not hold."""
        if not site:
            return self
        import copy

        view = copy.copy(self)
        view.card = self.card.with_site(site)
        return view

    def set_card(self, card: Card) -> None:
        """Use an updated card (e.g. thresholds saved on the Thresholds page), from the next call on."""
        self.card = card

    def predict(self, image: LoadedImage | np.ndarray | str | os.PathLike | bytes, heatmaps: bool = True,
                top_k_boxes: int = 3, box_threshold: float = 0.5, mc_samples: int = 0,
                mc_dropout: float = 0.2, mc_seed: int = 0, mc_tta: bool = False, tta: str = "none") -> Prediction:
        """Probabilities, heatmaps and boxes; with ``mc_samples > 0`` also Monte-Carlo dropout mean and
        spread (``prob_mean`` / ``prob_std`` / ``prob_var``; ``probs`` stays the deterministic output)."""
        card = self.card  # one card for the whole call, whatever set_card does meanwhile
        pred, x = self._predict(image, heatmaps, top_k_boxes, box_threshold, card)
        if tta and tta != "none":
            from .inference import VIEWS, check_tta, tta_sigmoid

            tta = check_tta(tta)
            raw = tta_sigmoid(self.model, x, tta)[0].cpu().numpy()
            pred.probs = combine(raw, card.model, card.thresholds).astype(np.float32)
            pred.notes.append(f"Probabilities are the mean over {VIEWS[tta]} test-time views ({tta}); heatmaps "
                              "come from the image as it is.")
        temps = card.temperature_list()
        if temps is not None:
            from .inference import apply_temperature, logits_from_probs

            pred.calibrated = apply_temperature(logits_from_probs(pred.probs[None]), np.array(temps))[0].astype(np.float32)
        if mc_samples and mc_samples > 0:
            self._add_mc(pred, x, mc_samples, mc_dropout, mc_seed, mc_tta, card)
        return pred

    def _add_mc(self, pred: Prediction, x: torch.Tensor, mc_samples: int, mc_dropout: float, mc_seed: int,
                mc_tta: bool, card: Card) -> Prediction:
        from .explain.uncertainty import mc_dropout as run_mc

        t0 = time.perf_counter()
        r = run_mc(self.model, x, int(mc_samples), mc_dropout, mc_seed, mc_tta,
                   post=lambda s: combine(s, card.model, card.thresholds))
        pred.prob_mean, pred.prob_std, pred.prob_var = r.mean, r.std, r.var
        kind, note = uncertainty_note(r.p, int(mc_samples))
        pred.mc = {"samples": int(mc_samples), "dropout_p": r.p, "tta": r.tta, "seed": int(mc_seed),
                   "kind": kind, "note": note}
        pred.seconds += time.perf_counter() - t0
        return pred

    def with_uncertainty(self, pred: Prediction, image: LoadedImage, mc_samples: int, mc_dropout: float = 0.2,
                         mc_seed: int = 0, mc_tta: bool = False) -> Prediction:
        """A copy of ``pred`` (this model's prediction of ``image``) with the Monte-Carlo dropout spread added,
        as ``predict(..., mc_samples=...)`` gives it: for showing the probabilities and heatmaps first and the
        spread when it is ready."""
        import copy

        x = self.prep.normalize(torch.from_numpy(self.prep.square(image.pixels))[None].to(self.device))
        return self._add_mc(copy.copy(pred), x, mc_samples, mc_dropout, mc_seed, mc_tta, self.card)

    def _predict(self, image, heatmaps: bool, top_k_boxes: int, box_threshold: float,
                 card: Card) -> tuple[Prediction, torch.Tensor]:
        t0 = time.perf_counter()
        loaded = image if isinstance(image, LoadedImage) else (
            LoadedImage(np.asarray(image, dtype=np.float32), "array", 8, tuple(np.shape(image))) if isinstance(image, np.ndarray)
            else read_image(image))
        h, w = loaded.pixels.shape
        notices = domain_notices(card, None if isinstance(image, np.ndarray) else loaded, card.name or self.path.name)
        trained_on = (card.trained_on or infer_trained_on(card)).get("summary", "")
        thresholds = np.array(card.threshold_list(), dtype=np.float32)
        square = self.prep.square(loaded.pixels)
        x = self.prep.normalize(torch.from_numpy(square)[None].to(self.device))
        if not heatmaps:
            with torch.no_grad():
                logits = self.model(x)
            probs = combine(torch.sigmoid(logits)[0].float().cpu().numpy(), card.model, card.thresholds)
            return Prediction(self.labels, probs, thresholds, np.zeros((len(self.labels), 0, 0), np.float32), {},
                              (h, w), time.perf_counter() - t0, "none", list(loaded.notes), warnings=notices,
                              trained_on=trained_on, site=card.metrics.get("site")), x
        if self.fast_cam:
            logits, cams = forward_with_cams(self.model, x)
            method = "GradCAM (single pass, = CAM for a GAP + linear head)"
        else:
            logits, cams = gradcam_loop(self.model, x)
            method = f"GradCAM (pytorch-grad-cam, per label: {self.fast_cam_reason})"
        probs = combine(torch.sigmoid(logits)[0].float().cpu().numpy(), card.model, card.thresholds)
        maps = np.stack([self.prep.unsquare(c, h, w) for c in cams[0]]).astype(np.float32)
        boxes = {label: boxes_from_heatmap(maps[i], threshold=box_threshold, top_k=top_k_boxes)
                 for i, label in enumerate(self.labels)}
        return Prediction(self.labels, probs, thresholds, maps, boxes, (h, w),
                          time.perf_counter() - t0, method, list(loaded.notes), tuple(cams.shape[-2:]),
                          warnings=notices, trained_on=trained_on, site=card.metrics.get("site")), x

    def heatmap(self, image: LoadedImage, label: str, method: str = "GradCAM",
                box_threshold: float = 0.5, top_k_boxes: int = 3) -> tuple[np.ndarray, list[Box]]:
        """One label's heatmap with any pytorch-grad-cam method, in the image's frame, and its boxes."""
        return self.heatmaps_for(image, [label], method, box_threshold, top_k_boxes)[0]

    def heatmaps_for(self, image: LoadedImage, labels: list[str], method: str = "GradCAM",
                     box_threshold: float = 0.5, top_k_boxes: int = 3) -> list[tuple[np.ndarray, list[Box]]]:
        """Several labels' heatmaps with one pytorch-grad-cam method (one CAM object, one input), with boxes."""
        for label in labels:
            if label not in self.labels:
                raise CheckpointError(f"{self.name} has no label {label!r}; its labels are {', '.join(self.labels)}.")
        h, w = image.pixels.shape
        x = self.prep.normalize(torch.from_numpy(self.prep.square(image.pixels))[None].to(self.device))
        with torch.enable_grad():
            _, cams = gradcam_loop(self.model, x, [self.labels.index(label) for label in labels], method)
        out = []
        for k in range(len(labels)):
            heat = self.prep.unsquare(cams[0, k], h, w).astype(np.float32)
            out.append((heat, boxes_from_heatmap(heat, threshold=box_threshold, top_k=top_k_boxes)))
        return out

    def combine(self, raw: np.ndarray, gate: float | None = None) -> np.ndarray:
        """Raw sigmoid outputs -> the probabilities shown: a two-stage model's gate applied with its one
        threshold (the card's, or ``gate``); plain models unchanged."""
        return combine(raw, self.card.model, self.card.thresholds, t=gate)

    def score_squares(self, squares: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, L) as :meth:`predict_squares` gives them, the penultimate-layer embedding projected to
        :data:`cxrcore.inference.EMBED_DIM` or None), in one pass (:meth:`embed_squares`)."""
        from .inference import project_embedding

        probs, pooled = self.embed_squares(squares, batch_size)
        return probs, None if pooled is None else project_embedding(pooled)

    @torch.no_grad()
    def embed_squares(self, squares: np.ndarray, batch_size: int = 64,
                      progress=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, L) as :meth:`predict_squares` gives them, the penultimate-layer features (N, C): the
        pooled features the classifier reads, or None), in one pass: a model with a split head
        (``forward_features``, ``forward_head``) gives both from one backbone pass; any other gives no features."""
        net = self.model
        if not all(hasattr(net, a) for a in ("forward_features", "forward_head")):
            return self.predict_squares(squares, batch_size=batch_size, progress=progress), None
        card = self.card
        n = len(squares)
        if not n:
            return np.zeros((0, len(self.labels)), np.float32), None
        # The outputs are allocated once and each batch written into them: a list of per-batch results, each
        # left alive between the large freed batch buffers, kept glibc from returning those to the system (about
        # 1.6 GB retained embedding 10,000 films; bench/RESULTS.md).
        probs, feats_out = np.empty((n, len(self.labels)), np.float32), None
        for k in range(0, n, max(1, batch_size)):
            x = self.prep.normalize(torch.from_numpy(np.array(squares[k:k + batch_size])).to(self.device))
            feats = net.forward_features(x)
            pooled = net.forward_head(feats, pre_logits=True).flatten(1).float().cpu().numpy()
            if feats_out is None:
                feats_out = np.empty((n, pooled.shape[1]), np.float32)
            feats_out[k:k + len(pooled)] = pooled
            p = torch.sigmoid(net.forward_head(feats)).float().cpu().numpy()
            probs[k:k + len(p)] = combine(p, card.model, card.thresholds)
            del x, feats, pooled, p
            if progress:
                progress(min(n, k + batch_size), n)
        return probs, feats_out

    @torch.no_grad()
    def predict_squares(self, squares: np.ndarray, batch_size: int = 64, progress=None, raw: bool = False,
                        tta: str = "none") -> np.ndarray:
        """Probabilities (N, L) for preprocessed uint8 squares (N, S, S), e.g. from the cache. ``raw``: the
        sigmoid outputs before a two-stage model's gate combination (:meth:`combine` applies it). ``tta``:
        none, flip or tencrop (:mod:`cxrcore.inference`): the mean over the views."""
        from .inference import VIEWS, check_tta, tta_sigmoid

        tta = check_tta(tta)
        card = self.card  # one card for every batch
        n = len(squares)
        out = np.empty((n, len(self.labels)), np.float32)   # written batch by batch (see embed_squares)
        batch_size = max(1, batch_size // VIEWS[tta])
        for k in range(0, n, batch_size):
            x = self.prep.normalize(torch.from_numpy(np.array(squares[k:k + batch_size])).to(self.device))
            p = tta_sigmoid(self.model, x, tta).cpu().numpy()
            out[k:k + len(p)] = p if raw else combine(p, card.model, card.thresholds)
            del x
            if progress:
                progress(min(n, k + batch_size), n)
        return out
