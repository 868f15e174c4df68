"""A reviewer's explanation of a comparison (seed 002): case type, prompt template, structured answer.

The case type decides the instructions: **easy** (both models right), **average** (one right), **hard**
(both wrong) when the ground truth of the label is known; otherwise the models' agreement decides
(agree: easy, disagree: average; "both wrong" cannot be known without the truth) and the prompt says so.

The answer is one JSON object checked against :class:`Review` (a pydantic model): a verdict for the
fine-tuned model against the baseline (IMPROVED / WORSE / NO CHANGE), a judgement of each Grad-CAM box
and the written explanation. It is asked for with the OpenAI client's structured output
(``response_format`` with the model's strict JSON schema); a server that rejects ``response_format``
is asked again with the schema in the prompt. Either way the answer is validated here, and cross-checked
against the facts that were sent (every judged box must be one of them). An answer that fails is an
:class:`Outcome` with ``error`` set and no review: callers show the raw text as unvalidated, never a
verdict.

Nothing here holds state between requests; the template a page edits is passed in.
"""
from __future__ import annotations

import base64
import json
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, LLMError
from .cases import CaseType, classify_case, truth_for
from .llm import LLMConfig, StructuredOutputRefused, _scrub, build_facts, chat_stream

VERDICTS = ("IMPROVED", "WORSE", "NO CHANGE")
CASE_TYPES = ("easy", "average", "hard")
BASELINE, FINETUNED = "baseline", "fine-tuned"


# --------------------------------------------------------------------------- the answer's schema

class BoxJudgement(BaseModel):
    """One Grad-CAM box of one model, judged."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(description="The model's name exactly as in the facts (e.g. baseline, fine-tuned).")
    label: str = Field(description="The label the box was drawn for.")
    box_id: str = Field(description="The box's id exactly as in the facts and on the panel (B1, B2, ...).")
    relevant: bool = Field(description="Whether the box covers anatomy where this label shows.")
    consistent_with_finding_location: bool = Field(
        description="Whether the box lies where the finding is (or would be) in this image.")
    why: str = Field(description="One sentence saying why.")


class Review(BaseModel):
    """The structured answer: explanation, a judgement per box, and the verdict."""

    model_config = ConfigDict(extra="forbid", strict=True)

    explanation: str = Field(description="The written explanation for the reviewer, plain clinical language.")
    boxes: list[BoxJudgement] = Field(description="One judgement for every box listed in the facts.")
    verdict: Literal["IMPROVED", "WORSE", "NO CHANGE"] = Field(
        description="The fine-tuned model against the baseline on this image.")


# --------------------------------------------------------------------------- case type

# CaseType, classify_case and truth_for live in cxrcore.explain.cases (one implementation, shared with the
# Evaluation page's case browser); imported above and re-exported here.


# --------------------------------------------------------------------------- prompt template

PLACEHOLDERS = {
    "label": "the label being explained",
    "baseline": "the baseline model's name",
    "finetuned": "the fine-tuned model's name",
    "case_type": "easy, average or hard",
    "case_basis": "how the case type was decided (ground truth or the models' agreement)",
    "case_detail": "each model's call, and whether it is right when the truth is known",
    "ground_truth": "the label's ground truth: present, absent or unknown",
    "case_instructions": "the steps for this case type (below, editable)",
    "box_ids": "the boxes to judge, as model/box_id pairs",
}

DEFAULT_TEMPLATE = """\
You are assisting a radiologist who reviews two chest X-ray classifiers on one image: the baseline \
model "${baseline}" and the fine-tuned model "${finetuned}". The attached panel shows the input radiograph, then \
each model's Grad-CAM heatmap for "${label}" with its boxes numbered B1, B2, ... and its top predictions. \
The structured facts give each model's probability, threshold and call for ${label}, each box (box_id, \
position in anatomical terms, xywh as fractions of the image, peak heat) and any warnings.

Case type: ${case_type} (${case_basis}). ${case_detail}

${case_instructions}

Then:
1. Judge every box: ${box_ids}. For each, say whether it is relevant to ${label} (it covers anatomy where \
${label} shows) and whether it is consistent with where the finding lies in this image, with one sentence \
why. Use the model names and box_ids exactly as in the facts.
2. Give a verdict for the fine-tuned model against the baseline on this image: IMPROVED, WORSE or NO \
CHANGE, weighing each model's call against the ground truth (${ground_truth}), its probability, and \
whether its heatmap supports its answer.
3. Write the explanation in plain clinical language, at most 200 words. Do not make a diagnosis; say \
where the evidence is weak. If the facts carry warnings (for example a model trained only on synthetic \
phantoms applied to a real film), state each one first, plainly, and do not present that model's outputs \
as findings.
"""

DEFAULT_CASE_INSTRUCTIONS = {
    "easy": ("Both models make the right call (when the ground truth is unknown: the same call, which does not "
             "confirm it). Confirm what both models saw: where each heatmap lies, whether they point at the same "
             "region, and why that is consistent with the finding (or with its absence)."),
    "average": ("One model is right and the other wrong (when the ground truth is unknown: they disagree). Say "
                "which model is right (or, without ground truth, which call the image supports better); what the "
                "wrong one missed (a false negative) or over-called (a false positive); and whether the heatmap "
                "of each model supports its answer."),
    "hard": ("Both models are wrong. Explain why both could be wrong; what in the image could mislead them "
             "(overlapping structures, devices or lines, positioning, exposure, a subtle or atypical finding); "
             "and what a reader should check in the image before trusting either model."),
}

JSON_INSTRUCTION = ("Answer with one JSON object and nothing else (no code fence, no text before or after), "
                    "following this JSON schema:\n")


@dataclass
class PromptTemplate:
    """The instruction template (``string.Template`` placeholders such as ``${label}``) and the steps per
    case type. A page keeps its own copy per session; nothing global changes."""

    text: str = DEFAULT_TEMPLATE
    cases: dict = field(default_factory=lambda: dict(DEFAULT_CASE_INSTRUCTIONS))

    @property
    def is_default(self) -> bool:
        return self.text == DEFAULT_TEMPLATE and self.cases == DEFAULT_CASE_INSTRUCTIONS

    def check(self) -> None:
        """ConfigError when a placeholder is unknown or a ``$`` is malformed."""
        for where, text in [("The prompt template", self.text)] + [
                (f"The {k} instructions", v) for k, v in self.cases.items()]:
            t = Template(text)
            if not t.is_valid():
                raise ConfigError(f"{where} has a '$' that is not a placeholder; write $$ for a dollar sign, "
                                  f"or use one of: {', '.join('${' + k + '}' for k in PLACEHOLDERS)}.")
            unknown = [x for x in t.get_identifiers() if x not in PLACEHOLDERS]
            if unknown:
                raise ConfigError(f"{where} uses {', '.join('${' + x + '}' for x in unknown)}, which "
                                  f"{'is not a placeholder' if len(unknown) == 1 else 'are not placeholders'}; "
                                  f"the placeholders are {', '.join('${' + k + '}' for k in PLACEHOLDERS)}.")
        missing = [c for c in CASE_TYPES if not str(self.cases.get(c, "")).strip()]
        if missing:
            raise ConfigError(f"The instructions for {', '.join(missing)} cases are empty; write them or reset "
                              "the template to the default.")

    def render(self, values: dict) -> str:
        self.check()
        inner = Template(self.cases[values["case_type"]]).substitute(values)
        return Template(self.text).substitute({**values, "case_instructions": inner}).strip()


def prompt_values(facts: dict, case: CaseType, names: dict | None = None) -> dict:
    """The placeholders' values for one comparison. ``names``: display name of each role (baseline,
    fine-tuned), when it differs from the role."""
    names = names or {}
    boxes = [f"{m}/{b['box_id']}" for m, e in facts["models"].items() for b in e.get("focus", {}).get("boxes", [])]
    truth = {True: "present", False: "absent", None: "unknown"}[case.truth_present]
    return {"label": facts["label"], "baseline": names.get(BASELINE, BASELINE),
            "finetuned": names.get(FINETUNED, FINETUNED), "case_type": case.name, "case_basis": case.basis_text,
            "case_detail": case.detail, "ground_truth": f"{facts['label']} {truth}",
            "box_ids": ", ".join(boxes) if boxes else "(no model drew a box for this label; judge none)",
            "case_instructions": ""}


def review_facts(predictions: dict, label: str, case: CaseType, names: dict | None = None) -> dict:
    """:func:`cxrcore.explain.llm.build_facts` with the case type, its basis and each model's role."""
    facts = build_facts(predictions, label, case)
    for role, entry in facts["models"].items():
        entry["role"] = role
        if names and names.get(role) and names[role] != role:
            entry["display_name"] = names[role]
    return facts


# --------------------------------------------------------------------------- validation

@dataclass
class Outcome:
    """What came back. ``review`` only when the answer passed the schema and the cross-check; otherwise
    ``error`` says why and ``raw_text`` is the unvalidated answer."""

    raw_text: str
    mode: str                       # "structured" (response_format) or "prompt" (schema in the prompt)
    review: Review | None = None
    error: str | None = None
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def valid(self) -> bool:
        return self.review is not None

    def box_rows(self, facts: dict) -> list[dict]:
        """One row per box of the facts (judged or not), for a table."""
        judged = {(j.model, j.box_id): j for j in (self.review.boxes if self.review else [])}
        rows = []
        for model, entry in facts["models"].items():
            for b in entry.get("focus", {}).get("boxes", []):
                j = judged.get((model, b["box_id"]))
                rows.append({"model": model, "box": b["box_id"],
                             "relevant": None if j is None else j.relevant,
                             "consistent with finding location": None if j is None else j.consistent_with_finding_location,
                             "why": "(not judged by the model)" if j is None else j.why,
                             "where": b["where"], "peak": b["score"]})
        return rows

    def to_dict(self) -> dict:
        out = {"valid": self.valid, "mode": self.mode, "fallback_reason": self.fallback_reason,
               "notes": self.notes, "seconds": round(self.seconds, 2)}
        if self.valid:
            out.update(self.review.model_dump())
        else:
            out.update(error=self.error, raw_text_unvalidated=self.raw_text)
        return out


def _strip_fence(text: str) -> str:
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.S)
    return m.group(1) if m else text.strip()


def _error_list(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:6]:
        where = ".".join(str(x) for x in e["loc"]) or "the answer"
        parts.append(f"{where}: {e['msg']}")
    more = len(exc.errors()) - 6
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_answer(text: str, facts: dict, mode: str = "structured") -> Outcome:
    """Check ``text`` against :class:`Review` and the facts that were sent."""
    schema_error = "the model's answer did not follow the schema: "
    body = _strip_fence(text)
    if not body:
        return Outcome(text, mode, error=schema_error + "it was empty.")
    try:
        review = Review.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return Outcome(text, mode, error=schema_error + "it is not a JSON object "
                           f"({exc.errors()[0]['msg']}).")
        return Outcome(text, mode, error=schema_error + _error_list(exc) + ".")
    label = facts["label"]
    sent = {(m, b["box_id"]) for m, e in facts["models"].items() for b in e.get("focus", {}).get("boxes", [])}
    wrong = [f"{j.model}/{j.box_id}" for j in review.boxes if (j.model, j.box_id) not in sent]
    if wrong:
        return Outcome(text, mode, error=schema_error + f"it judges {', '.join(wrong)}, which "
                       f"{'is not a box' if len(wrong) == 1 else 'are not boxes'} of the facts sent (those are: "
                       f"{', '.join(f'{m}/{b}' for m, b in sorted(sent)) or 'none'}).")
    from ..labels import canonical

    off = [f"{j.model}/{j.box_id} ({j.label})" for j in review.boxes if canonical(j.label) != canonical(label)]
    if off:
        return Outcome(text, mode, error=schema_error + f"it judges {', '.join(off)} for another label than "
                       f"{label}.")
    empty = [name for name, v in (("explanation", review.explanation),) if not v.strip()]
    empty += [f"boxes {j.model}/{j.box_id}.why" for j in review.boxes if not j.why.strip()]
    if empty:
        return Outcome(text, mode, error=schema_error + f"{', '.join(empty)} is empty.")
    notes = []
    judged = {(j.model, j.box_id) for j in review.boxes}
    missing = sorted(sent - judged)
    if missing:
        notes.append("The model did not judge " + ", ".join(f"{m}/{b}" for m, b in missing) + ".")
    twice = sorted({f"{j.model}/{j.box_id}" for j in review.boxes
                    if sum((k.model, k.box_id) == (j.model, j.box_id) for k in review.boxes) > 1})
    if twice:
        notes.append("The model judged " + ", ".join(twice) + " more than once; the table shows the last judgement.")
    return Outcome(text, mode, review=review, notes=notes)


def verdict_check(review: Review, case: CaseType) -> str | None:
    """A note when the verdict contradicts the ground truth in a one-right case (the fine-tuned model
    right and the baseline wrong is not WORSE, and the reverse is not IMPROVED)."""
    if case.basis != "ground truth" or case.name != "average":
        return None
    if case.right.get(FINETUNED) and not case.right.get(BASELINE) and review.verdict == "WORSE":
        return "The verdict WORSE contradicts the ground truth: the fine-tuned model is right here and the baseline wrong."
    if case.right.get(BASELINE) and not case.right.get(FINETUNED) and review.verdict == "IMPROVED":
        return "The verdict IMPROVED contradicts the ground truth: the baseline is right here and the fine-tuned model wrong."
    return None


# --------------------------------------------------------------------------- the request

@dataclass
class Event:
    """What a caller shows while the answer comes: ``waiting`` (nothing new; ``elapsed`` seconds so far),
    ``fallback`` (the server refused structured output; ``text`` says why; asked again), ``text`` (the
    explanation so far, or the raw text so far when it is not JSON yet), ``done`` (``outcome``)."""

    kind: str
    text: str = ""
    elapsed: float = 0.0
    outcome: Outcome | None = None


def partial_explanation(snapshot: str) -> str | None:
    """The ``explanation`` string of an incomplete JSON answer so far (None: not there yet)."""
    import jiter

    body = snapshot.lstrip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    if not body.startswith("{"):
        return None
    try:
        parsed = jiter.from_json(body.encode(), partial_mode="trailing-strings")
    except ValueError:
        return None
    value = parsed.get("explanation") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None


def _messages(prompt: str, facts: dict, panel_png: bytes, mode: str, schema: type[BaseModel] = Review) -> list[dict]:
    system = prompt if mode == "structured" else (
        prompt + "\n\n" + JSON_INSTRUCTION + json.dumps(schema.model_json_schema(), indent=1))
    return [{"role": "system", "content": system},
            {"role": "user", "content": [
                {"type": "text", "text": "Structured facts (JSON):\n" + json.dumps(facts, indent=1)},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(panel_png).decode()}},
            ]}]


def _answer(config: LLMConfig, messages: list, structured: bool, started: float,
            stop: threading.Event, schema: type[BaseModel] = Review) -> Iterator[Event]:
    """One request through :func:`cxrcore.explain.llm.chat_stream`; yields ``text`` events (the explanation so
    far) and finally the whole answer as a ``done`` event with a bare Outcome (not validated yet)."""
    shown = ""
    refusal = ""
    for chunk in chat_stream(config, messages, schema if structured else None, stop, started):
        if chunk.kind == "refusal":
            refusal = chunk.snapshot
        elif chunk.kind == "content":
            text = partial_explanation(chunk.snapshot)
            if text is None and not chunk.snapshot.lstrip().startswith(("{", "`")):
                text = chunk.snapshot  # not JSON: show it as it comes (validated at the end)
            if text and text != shown:
                shown = text
                yield Event("text", text, time.monotonic() - started)
        elif chunk.finish == "length":
            yield Event("done", outcome=Outcome(chunk.snapshot, "", error="the model's answer did not follow the "
                        "schema: it was cut off at the token limit before the JSON was complete."))
        elif chunk.finish == "content_filter":
            yield Event("done", outcome=Outcome(chunk.snapshot, "", error="the server's content filter stopped the "
                                                                          "answer."))
        elif refusal:
            yield Event("done", outcome=Outcome(refusal, "", error="the model declined to answer: " + refusal[:300]))
        else:
            yield Event("done", outcome=Outcome(chunk.snapshot, ""))


def review_events(panel_png: bytes, facts: dict, prompt: str, config: LLMConfig,
                  stop: threading.Event | None = None, schema: type[BaseModel] = Review,
                  validate=validate_answer) -> Iterator[Event]:
    """Ask for the structured review and yield :class:`Event` s; the last is ``done`` with the validated
    :class:`Outcome`. Raises LLMError (no key, unreachable, key rejected, too slow) with a safe message.
    ``schema`` and ``validate(text, facts, mode) -> Outcome``: another structured answer and its checks (the
    reading of a prior comparison, :mod:`cxrcore.prior.explain`); the default is the review of two models."""
    stop = stop or threading.Event()
    where = config.base_url or "the OpenAI API"
    t0 = time.monotonic()
    mode, fallback = "structured", None
    outcome = None
    while True:
        try:
            for event in _answer(config, _messages(prompt, facts, panel_png, mode, schema), mode == "structured", t0,
                                 stop, schema):
                if event.kind == "done":
                    outcome = event.outcome
                else:
                    yield event
            break
        except StructuredOutputRefused as exc:
            if mode != "structured":
                raise
            mode = "prompt"
            fallback = (f"{exc}; the schema was put in the prompt instead and the answer validated the same way.")
            yield Event("fallback", fallback, time.monotonic() - t0)
    if outcome is None:  # stopped by the caller
        return
    if outcome.error is None:
        if not outcome.raw_text.strip():
            raise LLMError(f"{where} answered with no text. Check that model {config.model!r} exists there and "
                           "accepts images.")
        outcome = validate(outcome.raw_text, facts, mode)
    outcome.mode, outcome.fallback_reason = mode, fallback
    outcome.raw_text = _scrub(outcome.raw_text, config.api_key)
    outcome.seconds = time.monotonic() - t0
    yield Event("done", elapsed=outcome.seconds, outcome=outcome)


def with_heartbeat(make_events, interval: float = 0.5) -> Iterator[Event]:
    """Run ``make_events(stop)`` (an iterator of :class:`Event`) in a worker thread and yield its events,
    with a ``waiting`` event whenever nothing came for ``interval`` seconds, so a caller can show that it
    is still waiting. Errors of the worker are raised here. Closing this iterator stops the worker at
    its next chunk (its request ends at the latest at the config's timeout)."""
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()

    def work():
        try:
            for ev in make_events(stop):
                q.put(ev)
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            q.put(exc)
        finally:
            q.put(done)

    t0 = time.monotonic()
    threading.Thread(target=work, daemon=True, name="cxr-llm-review").start()
    try:
        while True:
            try:
                item = q.get(timeout=interval)
            except queue.Empty:
                yield Event("waiting", elapsed=time.monotonic() - t0)
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --------------------------------------------------------------------------- the record

def review_record(*, comparison, label: str, facts: dict, case: CaseType, prompt: str, template: PromptTemplate,
                  config: LLMConfig, outcome: Outcome, names: dict | None = None, source: str = "",
                  owner: str = "") -> dict:
    """The explanation with its comparison as one JSON-able dict (no key, no image, no DICOM metadata)."""
    from urllib.parse import urlsplit, urlunsplit

    base = config.base_url
    if base:  # never a user:password@ part
        parts = urlsplit(base)
        base = urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path,
                           "", "")) if parts.hostname else base
    record = {
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source or "Compare",
        "owner": owner,
        "image": {"name": comparison.image_name, "sha256_16": comparison.image_hash},
        "models": {role: {"path": comparison.model_paths.get(role, ""), "name": (names or {}).get(role, role)}
                   for role in comparison.predictions},
        "label": label,
        "case": case.to_dict(),
        "facts": facts,
        "prompt": {"default_template": template.is_default, "template": template.text,
                   "case_instructions": template.cases, "sent": prompt},
        "llm": {"model": config.model, "base_url": base or "the OpenAI API"},
        "result": outcome.to_dict(),
    }
    if outcome.valid:
        note = verdict_check(outcome.review, case)
        if note:
            record["result"]["notes"] = record["result"]["notes"] + [note]
    text = json.dumps(record)
    if config.api_key and config.api_key in text:  # belt and braces: a key never reaches the disk
        record = json.loads(text.replace(config.api_key, "[key]"))
    return record


def save_review(record: dict, folder: Path | None = None) -> Path:
    """Write ``record`` to the workspace's ``explanations/`` folder; returns the file."""
    from .. import workspace

    folder = Path(folder) if folder else workspace.sub("explanations")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", record["label"]).strip("-").lower() or "label"
    path = folder / f"{stamp}-{record['image']['sha256_16']}-{slug}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path
