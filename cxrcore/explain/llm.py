"""LLM explanations of a comparison, through the ``openai`` client (OpenAI or any compatible server).

The message carries the comparison panel PNG and structured facts (top predictions, thresholds,
boxes in anatomical terms). Nothing from DICOM headers is ever included: the facts are built
from predictions only. The API key is never printed, logged or put in an error message. With no
LLM configured, :func:`template_summary` writes a deterministic summary from the same facts.
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from typing import Iterator

from ..errors import LLMError
from .boxes import Box

DISCLAIMER = ("Research tool output, not a diagnosis. Heatmaps show where a model looked, not where disease is; "
              "a qualified clinician must interpret the image.")

SYSTEM_PROMPT = (
    "You are assisting a radiologist who is reviewing two chest X-ray classifiers (a baseline and a fine-tuned "
    "model). You see a panel: the input radiograph, then each model's Grad-CAM overlay for one label, with their "
    "top predictions. Explain, in plain clinical language and in at most 180 words: what each model predicts, "
    "where each model's attention lies (anatomical zones), whether the attention is plausible for the finding, "
    "and how the two models differ. Do not make a diagnosis; say where the evidence is weak. If the facts carry "
    "\"warnings\" (for example a model trained only on synthetic phantoms applied to a real film), state each one "
    "first, plainly, and do not present that model's outputs as findings."
)


@dataclass
class LLMConfig:
    """Where one explanation request goes and with which key.

    ``isolated``: the endpoint is not the environment's own (a base URL someone typed), so nothing of
    the server's environment goes with the request: not ``OPENAI_API_KEY``, and not the headers the
    ``openai`` client adds from the environment (``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``,
    ``OPENAI_CUSTOM_HEADERS``). Only :meth:`from_env` makes a config that is not isolated, and only
    for the environment's own endpoint. Which base URLs a visitor may type is the operator's choice
    (:func:`cxrcore.hosting.llm_config_for`)."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    timeout: float = 60.0
    isolated: bool = True

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "LLMConfig":
        """The environment's endpoint and key (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``CXR_LLM_MODEL``);
        blank overrides are ignored. A ``base_url`` override other than the environment's own drops
        the environment's key: the request then carries only an ``api_key`` override, if any."""
        env = os.environ if environ is None else environ
        cfg = cls(api_key=env.get("OPENAI_API_KEY") or None, base_url=env.get("OPENAI_BASE_URL") or None,
                  model=env.get("CXR_LLM_MODEL") or cls.model, isolated=False)
        other = overrides.pop("base_url", None)
        if other not in (None, "") and not _same_endpoint(other, cfg.base_url):
            cfg.base_url, cfg.api_key, cfg.isolated = other, None, True
        for k, v in overrides.items():
            if v not in (None, ""):
                setattr(cfg, k, v)
        return cfg

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)

    def __repr__(self) -> str:  # never show the key
        return f"LLMConfig(model={self.model!r}, base_url={self.base_url!r}, api_key={'set' if self.api_key else 'unset'})"


def _same_endpoint(a: str | None, b: str | None) -> bool:
    """Whether two base URLs name one endpoint (None: OpenAI's)."""
    from ..errors import AccessError
    from ..hosting import OPENAI_BASE_URL, normalize_base_url

    try:
        return normalize_base_url(a or OPENAI_BASE_URL) == normalize_base_url(b or OPENAI_BASE_URL)
    except AccessError:
        return (a or "").rstrip("/") == (b or "").rstrip("/")


def _env_header_names() -> set[str]:
    """Lower-case names of the headers the openai client adds from ``OPENAI_CUSTOM_HEADERS``."""
    names = set()
    for line in (os.environ.get("OPENAI_CUSTOM_HEADERS") or "").split("\n"):
        if ":" in line:
            names.add(line.split(":", 1)[0].strip().lower())
    return names


def _client(config: LLMConfig):
    """The ``openai`` client for one request. For an isolated config, a request hook leaves only the
    config's own key on the request: headers the client took from the environment are removed."""
    import openai

    kwargs = dict(api_key=config.api_key, base_url=config.base_url, timeout=config.timeout, max_retries=0)
    if config.isolated:
        key = config.api_key
        strip = _env_header_names() | {"authorization"}

        def only_own_credentials(request) -> None:
            for name in list(request.headers.keys()):
                low = name.lower()
                if low in strip or low.startswith("openai-"):
                    del request.headers[name]
            request.headers["Authorization"] = f"Bearer {key}"

        kwargs["http_client"] = openai.DefaultHttpxClient(event_hooks={"request": [only_own_credentials]})
    return openai.OpenAI(**kwargs)


def anatomical_position(box: Box) -> str:
    """Zone and side of a box on a frontal view displayed in the standard orientation.

    The image's left half is the patient's right. Zones split the height in thirds.
    """
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    side = "right" if cx < 0.45 else ("left" if cx > 0.55 else "central")
    zone = "upper" if cy < 1 / 3 else ("middle" if cy < 2 / 3 else "lower")
    return f"{zone} zone, {side}" if side != "central" else f"{zone} zone, central"


def box_id(k: int) -> str:
    """The id of a model's ``k``-th box (0-based) for one label, as drawn on the panel: B1, B2, …"""
    return f"B{k + 1}"


def build_facts(predictions: dict, label: str, case=None, top_k: int = 5) -> dict:
    """Structured facts about a comparison; only model outputs, never patient metadata. ``case``: the
    label's :class:`cxrcore.eval.cases.CaseType` (from the ground truth the user set, or the models'
    agreement), added as ``ground_truth`` and ``case``."""
    models = {}
    for name, pred in predictions.items():
        entry = {
            "top": [{"label": x, "probability": round(p, 3),
                     "threshold": round(float(pred.thresholds[pred.labels.index(x)]), 3),
                     "positive": bool(p >= pred.thresholds[pred.labels.index(x)])} for x, p in pred.top(top_k)],
        }
        if label in pred.labels:
            i = pred.labels.index(label)
            entry["focus"] = {"label": label, "probability": round(float(pred.probs[i]), 3),
                              "threshold": round(float(pred.thresholds[i]), 3),
                              "boxes": [{"box_id": box_id(k), "where": anatomical_position(b),
                                         "score": round(b.score, 2),
                                         "xywh": [round(b.x, 3), round(b.y, 3), round(b.w, 3), round(b.h, 3)]}
                                        for k, b in enumerate(pred.boxes.get(label, []))]}
        entry["trained_on"] = getattr(pred, "trained_on", "")
        warnings = [w.text for w in getattr(pred, "warnings", [])]
        if warnings:
            entry["warnings"] = warnings
        if getattr(pred, "mc", None):
            entry["uncertainty_note"] = pred.mc.get("note", "")
        models[name] = entry
    facts = {"label": label, "models": models}
    all_warnings = list(dict.fromkeys(w for m in models.values() for w in m.get("warnings", [])))
    if all_warnings:
        facts["warnings"] = all_warnings
    if case is not None:
        facts["ground_truth"] = {"label": label, "present": case.truth_present}
        facts["case"] = {"type": case.name, "basis": case.basis, "detail": case.detail}
    return facts


def template_summary(facts: dict) -> str:
    """A deterministic written summary from the facts (used when no LLM is configured)."""
    label = facts["label"]
    lines = [f"WARNING: {w}" for w in facts.get("warnings", [])]
    for name, m in facts["models"].items():
        f = m.get("focus")
        if f is None:
            lines.append(f"- {name} has no output for {label}.")
            continue
        verdict = "above" if f["probability"] >= f["threshold"] else "below"
        where = "; ".join(f"{b['where']} (peak {b['score']:.2f})" for b in f["boxes"]) or "no distinct region"
        lines.append(f"- {name}: {label} {f['probability']:.2f}, {verdict} its threshold {f['threshold']:.2f}; "
                     f"attention on {where}.")
        others = [t["label"] for t in m["top"] if t["positive"] and t["label"] != label]
        if others:
            lines.append(f"  Also above threshold: {', '.join(others)}.")
    if "case" in facts:
        present = (facts.get("ground_truth") or {}).get("present")
        truth = {True: "present", False: "absent", None: "not known"}[present]
        lines.append(f"Ground truth: {label} {truth}; case type: {facts['case']['type']} "
                     f"(by {facts['case']['basis']}). {facts['case']['detail']}")
    return f"Summary for {label}:\n" + "\n".join(lines) + f"\n\n{DISCLAIMER}"


def _facts_text(facts: dict) -> str:
    import json

    return "Structured facts (JSON):\n" + json.dumps(facts, indent=1)


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[key]")
    return re.sub(r"(sk|key)-[A-Za-z0-9_\-*]{6,}", "[key]", text)


def explain_stream(panel_png: bytes, facts: dict, config: LLMConfig) -> Iterator[str]:
    """Stream the explanation text chunk by chunk. Raises LLMError with a safe message."""
    if not config.enabled:
        raise LLMError("No LLM is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a local "
                       "OpenAI-compatible server), or enter them on the Explain page.")
    import openai

    client = _client(config)
    image_url = "data:image/png;base64," + base64.b64encode(panel_png).decode()
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "text", "text": _facts_text(facts)},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]},
    ]
    where = config.base_url or "the OpenAI API"
    try:
        stream = client.chat.completions.create(model=config.model, messages=messages, stream=True, temperature=0.2)
        got = False
        for chunk in stream:
            choices = getattr(chunk, "choices", None) or []
            if not choices:
                continue
            delta = getattr(choices[0], "delta", None)
            text = getattr(delta, "content", None) if delta is not None else None
            if text:
                got = True
                yield text
        if not got:
            raise LLMError(f"{where} answered with no text. Check that model {config.model!r} exists there and accepts images.")
    except LLMError:
        raise
    except openai.AuthenticationError:
        raise LLMError(f"{where} rejected the API key (HTTP 401). Check OPENAI_API_KEY.") from None
    except openai.APITimeoutError:
        raise LLMError(f"{where} did not answer within {config.timeout:.0f} s. Try again or use a faster model.") from None
    except openai.APIConnectionError:
        raise LLMError(f"Could not connect to {where}. Check OPENAI_BASE_URL and that the server is running.") from None
    except openai.APIStatusError as exc:
        raise LLMError(f"{where} answered HTTP {exc.status_code}: {_scrub(str(getattr(exc, 'message', '')), config.api_key)[:200]}") from None
    except Exception as exc:  # garbage from a server: bad JSON, bad SSE framing
        raise LLMError(f"{where} answered something that is not a chat completion ({type(exc).__name__}). "
                       "Check that the server is OpenAI-compatible.") from None
