"""The LLM's reading of a prior comparison: the facts of the pair, the prompt, the structured answer and its checks.

The question at the reading station is "better, worse or the same as last time?"; the answer has the shape of the
two-model review (:mod:`cxrcore.explain.review`): a verdict IMPROVED / WORSE / NO CHANGE (here: the patient's films,
current against prior), a judgement of each change the facts list, and the written explanation. It is asked for
with structured output through the same transport, and validated the same way: the schema, then a cross-check
against the facts sent (every judged label is one of them, with the model's call as sent). What is sent: the panel
(prior as taken, prior registered, current, subtraction, the largest change's heatmap change) and facts built from
the comparison only (probabilities, Δp and its spread, calls, thresholds, the registration's quality, warnings):
no DICOM header, no file name.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..explain.review import VERDICTS, Outcome, _error_list, _strip_fence
from ..labels import CHANGES, canonical
from .change import PriorComparison, rounded

MAX_LABELS = 6   # the changes sent: every label called changed, then the largest |Δp|, up to this many


class ChangeJudgement(BaseModel):
    """One label's change, judged."""

    model_config = ConfigDict(extra="forbid", strict=True)

    label: str = Field(description="The label exactly as in the facts.")
    model_call: Literal["new", "resolved", "worse", "better", "unchanged"] = Field(
        description="The model's call for this label, exactly as in the facts.")
    supported: bool = Field(description="Whether the films, subtraction and heatmap change support the call.")
    why: str = Field(description="One sentence saying why.")


class ChangeReview(BaseModel):
    """The structured answer for a pair of films: explanation, a judgement per change listed, the verdict."""

    model_config = ConfigDict(extra="forbid", strict=True)

    explanation: str = Field(description="The written explanation for the reader, plain clinical language.")
    changes: list[ChangeJudgement] = Field(description="One judgement for every label listed in the facts.")
    verdict: Literal["IMPROVED", "WORSE", "NO CHANGE"] = Field(
        description="The current film against the prior, overall.")


assert tuple(ChangeJudgement.model_fields["model_call"].annotation.__args__) == CHANGES   # one list of changes
assert tuple(ChangeReview.model_fields["verdict"].annotation.__args__) == VERDICTS

PROMPT = """\
You are assisting a radiologist who compares a follow-up chest X-ray with the same patient's prior film, with the \
help of the classifier "{model}". The attached panel shows, left to right: the prior as taken, the prior \
registered onto the current film, the current film, the subtraction image (current minus registered prior: white \
brighter now, black darker now) and, for {label}, the change of the model's heatmap (red: more of it now, blue: \
less). The structured facts give, per label, the model's probability on each film, the change Δp with its spread, \
the model's call (new, resolved, worse, better, unchanged) and the thresholds used, the registration's quality \
and any warnings.

1. Judge each listed label's change ({labels}): whether the films, the subtraction and the heatmap change support \
the model's call, with one sentence why. Use the labels and calls exactly as in the facts.
2. Give a verdict for the current film against the prior: IMPROVED, WORSE or NO CHANGE, weighing the supported \
changes; a change that is not supported does not count.
3. Write the explanation in plain clinical language, at most 200 words. Do not make a diagnosis; say where the \
evidence is weak. If the facts carry warnings (registration failed, a model trained only on synthetic phantoms \
applied to real films, a film out of distribution), state each one first, plainly, and do not present the \
model's calls as findings. Remember that a difference in positioning, inspiration or exposure can look like a \
change.
"""


def change_facts(result: PriorComparison) -> dict:
    """What the LLM is told about the pair (built from the comparison only)."""
    rows = {r["label"]: r for r in result.rows()}
    chosen = result.changed()[:MAX_LABELS]
    want = min(MAX_LABELS, max(3, len(chosen)))   # at least the three largest changes, called or not
    for x in sorted(result.labels, key=lambda x: -abs(rows[x]["delta"])):
        if len(chosen) >= want:
            break
        if x not in chosen:
            chosen.append(x)
    reg = result.registration
    warnings = ([reg.warning] if reg.warning else []) + [w.text for w in result.notices()]
    mc = result.prediction("current").mc
    return {
        "question": "current film against the same patient's prior",
        "model": result.model,
        "label": chosen[0] if chosen else result.labels[0],
        "changes": [rounded(rows[x], 3) for x in chosen],
        "called_changed": result.changed(),
        "change_thresholds": "tuned on phantom pairs" if result.tuned else "default, not tuned",
        "registration": {"ncc_before": round(reg.ncc_before, 3), "ncc_after": round(reg.ncc_after, 3),
                         "ok": reg.ok, "caution": reg.caution, "pose_change": reg.params},
        "uncertainty": None if mc is None else mc.get("note"),
        "warnings": warnings,
    }


def change_prompt(facts: dict) -> str:
    return PROMPT.format(model=facts["model"], label=facts["label"],
                         labels=", ".join(f"{c['label']} ({c['call']})" for c in facts["changes"]))


def validate_change_answer(text: str, facts: dict, mode: str = "structured") -> Outcome:
    """Check ``text`` against :class:`ChangeReview` and the facts that were sent."""
    schema_error = "the model's answer did not follow the schema: "
    body = _strip_fence(text)
    if not body:
        return Outcome(text, mode, error=schema_error + "it was empty.")
    try:
        review = ChangeReview.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return Outcome(text, mode, error=schema_error + f"it is not a JSON object ({exc.errors()[0]['msg']}).")
        return Outcome(text, mode, error=schema_error + _error_list(exc) + ".")
    sent = {canonical(c["label"]): c for c in facts["changes"]}
    unknown = [j.label for j in review.changes if canonical(j.label) not in sent]
    if unknown:
        return Outcome(text, mode, error=schema_error + f"it judges {', '.join(unknown)}, not among the labels sent "
                       f"({', '.join(c['label'] for c in facts['changes'])}).")
    miscalled = [f"{j.label} ({j.model_call}, sent {sent[canonical(j.label)]['call']})" for j in review.changes
                 if j.model_call != sent[canonical(j.label)]["call"]]
    if miscalled:
        return Outcome(text, mode, error=schema_error + f"it gives the model's call wrongly for {', '.join(miscalled)}.")
    empty = (["explanation"] if not review.explanation.strip() else []) + \
        [f"changes {j.label}.why" for j in review.changes if not j.why.strip()]
    if empty:
        return Outcome(text, mode, error=schema_error + f"{', '.join(empty)} is empty.")
    notes = []
    missing = sorted(set(sent) - {canonical(j.label) for j in review.changes})
    if missing:
        notes.append("The model did not judge " + ", ".join(sent[k]["label"] for k in missing) + ".")
    note = verdict_note(review, facts)
    if note:
        notes.append(note)
    return Outcome(text, mode, review=review, notes=notes)


def verdict_note(review: ChangeReview, facts: dict) -> str | None:
    """A note when the verdict goes against every supported call: WORSE with only resolved / better supported,
    IMPROVED with only new / worse supported, or a change verdict where every supported call is unchanged."""
    calls = {j.model_call for j in review.changes if j.supported}
    up, down = calls & {"new", "worse"}, calls & {"resolved", "better"}
    if review.verdict == "WORSE" and down and not up:
        return "The verdict WORSE goes against the supported calls, which are all improvements."
    if review.verdict == "IMPROVED" and up and not down:
        return "The verdict IMPROVED goes against the supported calls, which are all new or worse findings."
    if review.verdict != "NO CHANGE" and calls and calls <= {"unchanged"}:
        return f"The verdict {review.verdict} comes with no supported change."
    return None


def change_summary(facts: dict) -> str:
    """A written summary from the same facts, without an LLM."""
    lines = [f"{w}" for w in facts["warnings"]]
    changed = [c for c in facts["changes"] if c["call"] != "unchanged"]
    if changed:
        lines.append(f"{facts['model']} calls " + "; ".join(
            f"{c['label']} {c['call']} ({c['prior']:.2f} → {c['current']:.2f}, Δ {c['delta']:+.2f})" for c in changed)
            + ".")
    else:
        lines.append(f"{facts['model']} calls no label changed (every |Δp| below its change threshold).")
    r = facts["registration"]
    lines.append(f"Registration: NCC over the lung fields {r['ncc_before']:.2f} before, {r['ncc_after']:.2f} after"
                 + ("" if r["ok"] else " (failed: the pictures of change are unreliable)") + ".")
    lines.append(f"Change thresholds: {facts['change_thresholds']}.")
    return " ".join(lines)

