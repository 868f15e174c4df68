"""What a page hands to the Explain page through the browser session: one typed object under one key.

The Compare page sends each comparison it shows; the Evaluation page's case browser sends a case (its image,
both models as baseline and fine-tuned, its ground truth and the label browsed); the Explain page reads it,
and sends its own when it compares a sample itself. Only this session's state holds it: nothing global.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace

from cxrcore.compare import Comparison

KEY = "explain_handoff"


@dataclass(frozen=True)
class Handoff:
    """A comparison for the Explain page and what its sender knows about it.

    ``origin``: who sent it, as the Explain page says it ("the Compare page"; None: the Explain page's own
    sample); ``image_id``: the image as the sender names it; ``names``: each role's (baseline, fine-tuned)
    display name; ``truth_from``: where the ground truth comes from; ``known``: the labels whose ground truth
    is known for the image (None: whatever ``comparison.truth`` says); ``label``: the label the sender was
    looking at, taken once by the Explain page."""

    comparison: Comparison
    origin: str | None = None
    image_id: str | None = None
    names: dict[str, str] = field(default_factory=dict)
    truth_from: str | None = None
    known: list[str] | None = None
    label: str | None = None


def send(state: MutableMapping, handoff: Handoff) -> None:
    """Hand ``handoff`` to the Explain page (``state``: this session's ``st.session_state``)."""
    state[KEY] = handoff


def received(state: MutableMapping) -> Handoff | None:
    """What was handed to the Explain page in this session, or None."""
    value = state.get(KEY)
    return value if isinstance(value, Handoff) else None


def take_label(state: MutableMapping) -> str | None:
    """The label the sender was looking at, once: later calls give None until something new is sent."""
    got = received(state)
    if got is None or got.label is None:
        return None
    state[KEY] = replace(got, label=None)
    return got.label


CASES_KEY = "reader_study_cases"


@dataclass(frozen=True)
class StudyCases:
    """Cases the Evaluation page's case browser hands to the Reader study page: each a dict with ``image`` (path),
    ``source_id`` and ``truth`` ({finding: 0/1}); ``finding`` the label browsed; ``origin`` in words."""

    cases: tuple[dict, ...]
    finding: str
    origin: str


def send_cases(state: MutableMapping, cases: StudyCases) -> None:
    state[CASES_KEY] = cases


def received_cases(state: MutableMapping) -> StudyCases | None:
    value = state.get(CASES_KEY)
    return value if isinstance(value, StudyCases) else None
