"""``cxr combine`` and ``cxr zeroshot``: checkpoints made from other models."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CXRError
from .common import Command


def cmd_combine(a) -> int:
    from ..models.two_network import combine_checkpoints

    card = combine_checkpoints(a.disease, a.gate, a.out, mode=a.gate_mode, name=a.name or "")
    t = card.model["two_stage"]["gate_threshold"]
    print(f"combined two-network checkpoint in {a.out}: {len(card.labels) - 1} findings from {a.disease}, "
          f"gate {card.labels[-1]!r} from {a.gate} (threshold {t:.3f}, {a.gate_mode}); the other thresholds are the "
          "disease model's own: tune them on the Thresholds page for the combination")
    return 0


def cmd_zeroshot(a) -> int:
    """A zero-shot CLIP checkpoint with your labels, prompts and scoring (models/clip.py)."""
    from ..labels import resolve_label_space
    from ..models.clip import make_zero_shot

    templates = {}
    if a.prompts:
        try:
            templates = json.loads(Path(a.prompts).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CXRError(f"Could not read the prompts file {a.prompts} ({exc}); it is JSON: "
                           '{"present": [...], "absent": [...], "labels": {"Mass": {"present": [...], "absent": [...]}}}.')
        if not isinstance(templates, dict):
            raise CXRError(f"The prompts file {a.prompts} must hold a JSON object.")
    if a.present:
        templates["present"] = list(a.present)
    if a.absent:
        templates["absent"] = list(a.absent)
    labels = resolve_label_space(a.labels)
    out = make_zero_shot(a.model, a.out, labels=labels, scoring=a.scoring, templates=templates)
    print(f"zero-shot checkpoint of {a.model} in {out}: {len(labels)} labels, scoring {a.scoring} "
          "(prompts on the card; use it wherever a checkpoint is)")
    return 0


def _combine_flags(s) -> None:
    from ..models.heads import GATE_MODES

    s.add_argument("--disease", required=True, help="checkpoint (or run folder) of the disease model")
    s.add_argument("--gate", required=True, help="checkpoint (or run folder) of the binary gate model (one label)")
    s.add_argument("--out", required=True, help="folder for the combined checkpoint")
    s.add_argument("--gate-mode", choices=list(GATE_MODES), default="soft",
                   help="below the gate: soft scales a finding by the gate's probability, hard reports 0")
    s.add_argument("--name", help="the combined model's name")
    s.set_defaults(func=cmd_combine)


def _zeroshot_flags(s) -> None:
    s.add_argument("model", help="clip:<open_clip model>/<tag>, clip:hf-hub:<org>/<repo> or clip:local-dir:<folder>")
    s.add_argument("--out", required=True, help="folder for the checkpoint")
    s.add_argument("--labels", default="nih14", help="nih14, chexpert14, chexpert5 or a comma-separated list")
    s.add_argument("--present", action="append", help="a 'present' template with {label} (repeat for several)")
    s.add_argument("--absent", action="append", help="an 'absent' template with {label} (repeat for several)")
    s.add_argument("--prompts", help="JSON file: present / absent templates and per-label prompts")
    s.add_argument("--scoring", choices=["softmax", "minmax"], default="softmax",
                   help="softmax over each (present, absent) pair with CLIP's logit scale, or min-max over the "
                        "image's labels (seed 002)")
    s.set_defaults(func=cmd_zeroshot)


COMBINE = Command("combine", "one two-stage model from a disease checkpoint and a one-label gate checkpoint",
                  _combine_flags)
ZEROSHOT = Command("zeroshot", "a zero-shot CLIP checkpoint (clip:<model>/<tag>) with your labels and prompts",
                   _zeroshot_flags)
