"""Phantom generator: procedural chest radiographs in the on-disk layouts of NIH and CheXpert.

This is the embedded default dataset. :func:`generate` writes ``n`` radiograph-like images
with the folder layout, file names and label tables of the real dataset it imitates, so the
ordinary dataset readers open it unchanged:

- ``nih``: ``images/NNNNNNNN_MMM.png``, ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``
  (box coordinates in the 1024-pixel frame of a real NIH image).
- ``chexpert``: ``train|valid/patientNNNNN/studyN/view1_frontal.jpg``, ``train.csv``,
  ``valid.csv`` (paths prefixed ``CheXpert-v1.0-small/``) and ``phantom_boxes.csv``
  (NIH box format, ``Image Index`` = the ``Path`` string, 1024-pixel frame).
- both: ``PHANTOM.json`` (generator version, domain, n, size, seed).

Which findings an image carries is a row drawn uniformly from the real label table that
ships with torchxrayvision (frontal rows only for CheXpert), so prevalence and co-occurrence
match the real datasets. Each finding is drawn as a visible, localized sign with a
ground-truth box. The two domains look different on purpose (NIH: clean, sharp PA-like films;
CheXpert: portable AP-like films with lower contrast, more noise, rotation, a brightness
gradient, an L/R marker and blur), so a model trained on one transfers imperfectly.

Everything is deterministic: image ``i`` depends only on ``(seed, domain, i)``, so a smaller
``n`` yields exactly the first images and rows of a larger one.

The package, by part:

- ``tables.py``: the real label tables, patient layout, row sampling (:func:`sample_table`,
  :func:`row_labels`), column layouts and argument checks;
- ``canvas.py``: geometry helpers (body frame to pixels, windows, soft edges, boxes, trees);
- ``anatomy.py``: body, lungs, heart, mediastinum, vessels and bones;
- ``findings.py``: the ``f_*`` renderers of the findings' signs;
- ``devices.py``: tubes, lines and ECG leads (Support Devices);
- ``film.py``: film effects (exposure, film curve, noise, blur, marker, the domain's look);
- ``renderer.py``: the renderer combining them, :func:`render`;
- ``writing.py``: :func:`generate`, the worker pool, image, table and box writing;
- ``noise.py``: known label noise (:func:`~cxrcore.data.phantom.noise.add_label_noise`);
- ``pairs.py``: follow-up pairs with a known change per finding
  (:func:`~cxrcore.data.phantom.pairs.generate_pairs`, ``cxr phantom --pairs``).
"""
from __future__ import annotations

from .canvas import Box
from .findings import FINDINGS
from .renderer import render
from .tables import (BOX_COLUMNS, CHEXPERT_COLUMNS, CHEXPERT_PREFIX, DOMAINS, MAX_N, MAX_SIZE, MIN_SIZE,
                     NIH_COLUMNS, VALID_FRACTION, row_labels, sample_table)
from .writing import BOX_FRAME, GENERATOR_VERSION, generate

__all__ = ["generate", "render", "sample_table", "row_labels", "GENERATOR_VERSION", "DOMAINS",
           "NIH_COLUMNS", "CHEXPERT_COLUMNS", "BOX_COLUMNS", "FINDINGS", "Box", "BOX_FRAME",
           "CHEXPERT_PREFIX", "MAX_N", "MAX_SIZE", "MIN_SIZE", "VALID_FRACTION"]
