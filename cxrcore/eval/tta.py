"""Test-time augmentation for evaluation: the views and their mean live in :mod:`cxrcore.inference` (the
predictor uses them too); named here for the evaluation's callers."""
from __future__ import annotations

from ..inference import TTA_MODES, VIEWS, check_tta, tta_sigmoid, tta_views

__all__ = ["TTA_MODES", "VIEWS", "check_tta", "tta_sigmoid", "tta_views"]
