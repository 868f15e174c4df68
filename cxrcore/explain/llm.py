"""LLM explanations of a comparison: the facts sent, and the transport to the ``openai`` client (OpenAI or
any compatible server).

The message carries the comparison panel PNG and structured facts (top predictions, thresholds,
boxes in anatomical terms). Nothing from DICOM headers is ever included: the facts are built
from predictions only. The API key is never printed, logged or put in an error message. With no
LLM configured, :func:`template_summary` writes a deterministic summary from the same facts.

The transport (:func:`chat_stream`) is every call to the client: one streamed chat completion, its
chunks, and each failure of the server turned into an :class:`LLMError` with a safe message.
:mod:`cxrcore.explain.review` builds the request and reads the answer. Which base URLs a visitor may
use is the operator's policy (:mod:`cxrcore.hosting`, above this module).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

from ..errors import AccessError, LLMError

if TYPE_CHECKING:
    import threading

    from .boxes import Box

OPENAI_BASE_URL = "https://api.openai.com/v1"  # the openai client's default endpoint

DISCLAIMER = ("Research tool output, not a diagnosis. Heatmaps show where a model looked, not where disease is; "
              "a qualified clinician must interpret the image.")

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


def normalize_base_url(url: str) -> str:
    """``scheme://host[:port]/path`` in lower case without a trailing slash; AccessError for anything
    that is not a plain http(s) URL (credentials, query or fragment in it)."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise AccessError(f"{text!r} is not a valid URL.") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise AccessError(f"{text!r} is not an http(s) URL.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise AccessError(f"{text!r}: a base URL carries no user name, password, query or fragment.")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _same_endpoint(a: str | None, b: str | None) -> bool:
    """Whether two base URLs name one endpoint (None: OpenAI's)."""
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
    label's :class:`cxrcore.explain.cases.CaseType` (from the ground truth the user set, or the models'
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


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[key]")
    return re.sub(r"(sk|key)-[A-Za-z0-9_\-*]{6,}", "[key]", text)


# --------------------------------------------------------------------------- transport

NOT_CONFIGURED = ("No LLM is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a local OpenAI-compatible "
                  "server), or enter them on the Explain page.")


class StructuredOutputRefused(LLMError):
    """The server does not accept ``response_format`` (HTTP 400 / 422); ``status`` and the server's scrubbed
    message say so. The caller may ask again without it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class Chunk:
    """A piece of a streamed answer: ``content`` (``text`` the new piece, ``snapshot`` the answer so far),
    ``refusal`` (structured output's refusal text), or the last, ``end`` (``snapshot`` the whole answer;
    ``finish`` None, ``"length"`` when cut at the token limit, ``"content_filter"`` when the server's filter
    stopped it)."""

    kind: str
    text: str = ""
    snapshot: str = ""
    finish: str | None = None


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


def chat_stream(config: LLMConfig, messages: list, response_format=None, stop: "threading.Event | None" = None,
                started: float | None = None) -> Iterator[Chunk]:
    """One streamed chat completion (temperature 0.2), as :class:`Chunk` s ending with ``end``; nothing more
    once ``stop`` is set. ``response_format``: a pydantic model for structured output (the client's own parse
    of the answer is not relied on: a caller validates the text). ``started``: ``time.monotonic()`` when the
    caller's request began (default now); the answer must be complete ``config.timeout`` seconds after it.
    Raises :class:`StructuredOutputRefused` when the server rejects ``response_format``, and LLMError (no key,
    unreachable, key rejected, too slow, not OpenAI-compatible) with a safe message, never the key."""
    if not config.enabled:
        raise LLMError(NOT_CONFIGURED)
    import openai
    from pydantic import ValidationError

    started = time.monotonic() if started is None else started
    where = config.base_url or "the OpenAI API"
    kwargs = dict(model=config.model, messages=messages, temperature=0.2)
    if response_format is not None:
        kwargs["response_format"] = response_format
    received = False  # part of an answer came (a timeout after it is a stall, not a slow start)
    try:
        chunks: list[str] = []
        refusal: list[str] = []
        finish = None
        with _client(config).chat.completions.stream(**kwargs) as stream:
            try:
                for event in stream:
                    if stop is not None and stop.is_set():
                        return
                    if time.monotonic() - started > config.timeout:
                        raise LLMError(f"{where} did not finish its answer within {config.timeout:.0f} s; it was "
                                       "stopped. Try again, raise the timeout, or use a faster model.")
                    if event.type == "refusal.delta":  # structured output's refusal: no JSON will come
                        received = True
                        refusal.append(event.delta)
                        yield Chunk("refusal", event.delta, "".join(refusal))
                    elif event.type == "content.delta":
                        received = True
                        chunks.append(event.delta)
                        yield Chunk("content", event.delta, event.snapshot)
            except ValidationError:
                pass  # the client's own parse of the finished answer: the caller validates the text
            except openai.LengthFinishReasonError:
                finish = "length"
            except openai.ContentFilterFinishReasonError:
                finish = "content_filter"
        yield Chunk("end", snapshot="".join(chunks), finish=finish)
    except LLMError:
        raise
    except openai.BadRequestError as exc:
        message = _scrub(str(getattr(exc, "message", "")), config.api_key)
        if response_format is not None and exc.status_code in (400, 422):
            raise StructuredOutputRefused(f"{where} did not accept structured output (HTTP {exc.status_code}: "
                                          f"{message[:160]})", exc.status_code) from None
        raise LLMError(f"{where} answered HTTP {exc.status_code}: {message[:200]}") from None
    except openai.AuthenticationError:
        raise LLMError(f"{where} rejected the API key (HTTP 401). Check OPENAI_API_KEY.") from None
    except openai.APITimeoutError:
        if received:
            raise LLMError(f"{where} stopped sending its answer for {config.timeout:.0f} s; it was abandoned and "
                           "nothing of it is used. Try again, raise the timeout, or use a faster model.") from None
        raise LLMError(f"{where} did not answer within {config.timeout:.0f} s. Try again, raise the timeout, or use "
                       "a faster model.") from None
    except openai.APIConnectionError:
        raise LLMError(f"Could not connect to {where}. Check OPENAI_BASE_URL and that the server is running.") from None
    except openai.APIStatusError as exc:
        raise LLMError(f"{where} answered HTTP {exc.status_code}: "
                       f"{_scrub(str(getattr(exc, 'message', '')), config.api_key)[:200]}") from None
    except Exception as exc:  # noqa: BLE001 - garbage from a server: bad JSON, bad SSE framing, a stalled read
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:  # a read the client did not wrap
            raise LLMError(f"{where} stopped sending its answer for {config.timeout:.0f} s; it was abandoned. Try "
                           "again, raise the timeout, or use a faster model.") from None
        raise LLMError(f"{where} answered something that is not a chat completion ({type(exc).__name__}). "
                       "Check that the server is OpenAI-compatible.") from None
