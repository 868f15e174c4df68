"""Box supervision: where a training image has ground-truth boxes, teach each label's heatmap to peak on them.

Chest X-ray datasets sometimes come with a few boxes beside the image labels (NIH ChestX-ray14's
``BBox_List_2017.csv``: 984 boxes; the phantoms: a box for every sign). Li et al. (CVPR 2018, "Thoracic
disease identification and localization with limited supervision") showed that a little box
supervision makes a classifier's maps point at the finding. This is the simple form of it for the
models whose Grad-CAM is their class activation map (global average pooling + one linear layer:
:func:`cxrcore.explain.cam.fast_cam_check`): for every (image, label) with a positive training target
and at least one box, the label's map over the last feature grid, ``W_label @ features``, is turned into
a distribution over the grid by a softmax, and the loss is ``-log`` of the share of it that lies on the
label's boxes (each cell counted by the fraction of it the boxes cover). A softmax does not change when
a constant is added to the map, so this term moves *where* the label's evidence lies and leaves *how
much* there is, the image-level logit, to the classification loss. It is added to that loss with the
weight ``box_loss``; the validation loss stays the classification loss alone.

Boxes go through the same geometry as the image: letterbox / crop into the square (the image's own
size read from its header), then the training augmentation's affine warp (:class:`~.augment.Augment`
warps the box masks with the image's own sampling grid).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..labels import find_label

MASK_RES = 64          # box masks are drawn on this grid over the square input, then pooled to the feature grid


@dataclass
class BoxTargets:
    """Boxes of the training images as model-label indices and square-normalised corners.

    ``start[i]:start[i + 1]`` are row ``i``'s boxes in ``label`` (model label index) and ``xyxy``
    (x0, y0, x1, y1 in [0, 1] of the square input). ``n_pairs``: (image, label) pairs with a box."""

    start: np.ndarray
    label: np.ndarray
    xyxy: np.ndarray
    n_pairs: int
    skipped: dict

    def rows_with_boxes(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.start) > 0)

    def masks(self, rows: np.ndarray, n_labels: int, res: int = MASK_RES) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, L, res, res) float masks of the rows' boxes (1 on a box) and (B, L) which pairs have any; None
        when none of the rows has a box."""
        picks = [(b, k) for b, i in enumerate(rows) for k in range(self.start[i], self.start[i + 1])]
        if not picks:
            return None
        bi = torch.tensor([p[0] for p in picks])
        k = np.array([p[1] for p in picks])
        li = torch.from_numpy(self.label[k].astype(np.int64))
        xyxy = torch.from_numpy(self.xyxy[k].astype(np.float32))
        centres = (torch.arange(res, dtype=torch.float32) + 0.5) / res
        on_x = (centres[None, :] >= xyxy[:, 0:1]) & (centres[None, :] < xyxy[:, 2:3])   # (K, res)
        on_y = (centres[None, :] >= xyxy[:, 1:2]) & (centres[None, :] < xyxy[:, 3:4])
        boxes = (on_y[:, :, None] & on_x[:, None, :]).float()                             # (K, res, res)
        out = torch.zeros(len(rows) * n_labels, res, res)
        out.index_put_((bi * n_labels + li,), boxes, accumulate=True)
        out = out.clamp_(max=1.0).view(len(rows), n_labels, res, res)
        has = torch.zeros(len(rows), n_labels, dtype=torch.bool)
        has[bi, li] = True
        return out, has


def box_targets(index, labels: list[str], targets: np.ndarray, prep) -> BoxTargets:
    """The boxes of ``index`` (``image_id, label, x, y, w, h`` as fractions of the image) for the model's ``labels``,
    kept where the row's training target for that label is positive (an uncertain finding counts when the
    policy makes it positive), mapped into the square input of ``prep``. DataError when none is left."""
    boxes = index.boxes if index.boxes is not None else pd.DataFrame()
    if not len(boxes):
        raise DataError(f"Box supervision needs ground-truth boxes, and {index.name} has none (NIH: "
                        "BBox_List_2017*.csv beside the label table; the CheXpert phantom: phantom_boxes.csv). "
                        "Set box_loss to 0 for this dataset.")
    row_of = {str(i): r for r, i in enumerate(index.frame["image_id"].astype(str))}
    paths = index.frame["path"].tolist()
    skipped: dict[str, int] = {}
    per_row: dict[int, list] = {}
    sizes: dict[int, tuple[int, int] | None] = {}
    for b in boxes.itertuples(index=False):
        r = row_of.get(str(b.image_id))
        if r is None:
            continue
        j = find_label(str(b.label), labels)
        if j is None:
            skipped[str(b.label)] = skipped.get(str(b.label), 0) + 1
            continue
        t = targets[r, j]
        if not (t == t and t >= 0.5):   # negative, ignored (NaN) or masked out for this row: no box target
            continue
        if r not in sizes:
            sizes[r] = _image_size(paths[r])
        if sizes[r] is None:
            skipped["unreadable image"] = skipped.get("unreadable image", 0) + 1
            continue
        h, w = sizes[r]
        g = prep.geometry(h, w)
        s = float(prep.size)
        # box fractions of the image -> its pixels -> the square input (letterbox or crop)
        x0 = (float(b.x) * w * g.scale + g.left) / s
        y0 = (float(b.y) * h * g.scale + g.top) / s
        x1 = x0 + float(b.w) * w * g.scale / s
        y1 = y0 + float(b.h) * h * g.scale / s
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)
        if x1 <= x0 or y1 <= y0:
            continue   # outside the square (a centre crop cut it off)
        per_row.setdefault(r, []).append((j, x0, y0, x1, y1))
    if not per_row:
        raise DataError(f"None of the boxes of {index.name} belongs to a positive label of the chosen label space "
                        f"({len(boxes)} boxes; labels not in the space: {', '.join(sorted(skipped)) or 'none'}). "
                        "Set box_loss to 0 or choose labels the boxes are for.")
    n = len(index.frame)
    counts = np.zeros(n + 1, dtype=np.int64)
    for r, items in per_row.items():
        counts[r + 1] = len(items)
    start = np.cumsum(counts)
    label = np.zeros(start[-1], dtype=np.int16)
    xyxy = np.zeros((start[-1], 4), dtype=np.float32)
    for r, items in per_row.items():
        for k, (j, *c) in enumerate(items):
            label[start[r] + k] = j
            xyxy[start[r] + k] = c
    pairs = sum(len({it[0] for it in items}) for items in per_row.values())
    return BoxTargets(start, label, xyxy, pairs, skipped)


def _image_size(path) -> tuple[int, int] | None:
    """(height, width) from the image's header (PIL reads only the header); DICOM and others through the reader."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except Exception:  # noqa: BLE001 - not a format PIL knows (DICOM): read it the app's way
        try:
            from ..data.imageio import read_image

            h, w = read_image(path).pixels.shape
            return int(h), int(w)
        except Exception:  # noqa: BLE001 - an unreadable image has no box target (the cache marks it too)
            return None


def check_model(model: nn.Module) -> None:
    """ConfigError unless the model's Grad-CAM is its class activation map (GAP + one linear layer), the map the
    box loss shapes."""
    from ..explain.cam import fast_cam_check

    ok, why = fast_cam_check(model)
    if not ok:
        raise ConfigError(f"Box supervision shapes a label's class activation map, which needs global average "
                          f"pooling and one linear classifier; this model does not have them ({why}). Use a timm "
                          "CNN (e.g. regnetx_002, resnet, densenet, efficientnet, convnext) or set box_loss to 0.")


class WithMaps(nn.Module):
    """The model's logits and every label's class activation map (``W @ features``, no bias) from one pass;
    DDP and torch.compile wrap this instead of the model when box supervision is on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        logits = self.model.forward_head(feats)
        maps = torch.einsum("lc,bchw->blhw", self.model.get_classifier().weight, feats)
        return logits, maps


def box_loss(maps: torch.Tensor, masks: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Mean over the (image, label) pairs with boxes of ``-log`` (share of the label's softmax map on its boxes).

    maps: (B, L, h, w) class activation maps; masks: (B, L, R, R) box masks over the square input (after the
    augmentation's warp), pooled here to the map's grid as the covered fraction of each cell; has: (B, L)."""
    if not bool(has.any()):
        return maps.sum() * 0.0
    h, w = maps.shape[-2:]
    cover = F.adaptive_avg_pool2d(masks.to(maps.device, torch.float32), (h, w))[has]     # (P, h, w)
    logp = torch.log_softmax(maps.float()[has].flatten(1), dim=1)                          # (P, h*w)
    cover = cover.flatten(1)
    on = torch.logsumexp(logp + torch.log(cover.clamp_min(1e-12)), dim=1)
    # A box the warp moved off the grid leaves nothing to point at: no term for that pair.
    keep = cover.sum(1) > 0
    if not bool(keep.any()):
        return maps.sum() * 0.0
    return -(on[keep]).mean()
