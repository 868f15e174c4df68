"""A local OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

It records every request (path, Authorization header, all headers, body), checks the Authorization
header, and answers in one of several modes:

- ``ok``: the plain text ``answer``, streamed (SSE);
- ``review``: a valid structured review (seed 002's JSON: verdict, a judgement of every box listed in the
  facts it received, explanation), built from the facts and case type in the request, streamed;
- ``invalid``: JSON that breaks the review schema (an unknown verdict, a box judgement with a string for a
  boolean and fields missing);
- ``refuse``: a refusal (the ``refusal`` field of structured output) and no content;
- ``401``, ``garbage`` (not SSE), ``slow`` (waits ``delay`` seconds before answering at all), ``stall``
  (sends the start of a review, then waits ``delay`` seconds before the rest).

``reject_response_format=True`` makes it a server without structured output: any request carrying
``response_format`` gets HTTP 400, as such servers answer. Non-streamed requests get one completion.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sent_facts(body: dict) -> dict | None:
    """The structured facts in a chat request's user message (None when there are none)."""
    for msg in body.get("messages", []):
        content = msg.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            text = part.get("text", "") if part.get("type") == "text" else ""
            if text.startswith("Structured facts (JSON):\n"):
                return json.loads(text.split("\n", 1)[1])
    return None


def change_answer(facts: dict) -> str:
    """A valid reading of a prior comparison's facts: every change judged (supported when the call is not
    "unchanged" and the registration held), a verdict that follows the supported calls."""
    judged = [{"label": c["label"], "model_call": c["call"], "supported": c["call"] != "unchanged",
               "why": f"{c['label']}: {c['prior']:.2f} before, {c['current']:.2f} now."} for c in facts["changes"]]
    up = any(j["supported"] and j["model_call"] in ("new", "worse") for j in judged)
    down = any(j["supported"] and j["model_call"] in ("resolved", "better") for j in judged)
    verdict = "WORSE" if up else "IMPROVED" if down else "NO CHANGE"
    return json.dumps({"explanation": f"Compared with the prior, the films look {verdict.lower()} to the stub.",
                       "changes": judged, "verdict": verdict})


def review_answer(body: dict) -> str:
    """A valid review of the facts in ``body``: every box judged, a verdict that follows the case (for a prior
    comparison's facts, :func:`change_answer`)."""
    facts = sent_facts(body) or {"label": "?", "models": {}}
    if "changes" in facts:
        return change_answer(facts)
    label, case = facts["label"], facts.get("case", {})
    boxes = []
    for model, entry in facts["models"].items():
        for b in entry.get("focus", {}).get("boxes", []):
            boxes.append({"model": model, "label": label, "box_id": b["box_id"], "relevant": b["score"] >= 0.5,
                          "consistent_with_finding_location": "lower" in b["where"] or "middle" in b["where"],
                          "why": f"The {model} box {b['box_id']} lies in the {b['where']} zone."})
    verdict = "NO CHANGE"
    right = None
    if case.get("type") == "average" and facts.get("ground_truth", {}).get("present") is not None:
        calls = {m: e["focus"]["probability"] >= e["focus"]["threshold"] for m, e in facts["models"].items()}
        right = calls.get("fine-tuned") == facts["ground_truth"]["present"]
        verdict = "IMPROVED" if right else "WORSE"
    text = (f"{case.get('type', 'unknown').capitalize()} case for {label} ({case.get('basis', 'no basis')}). "
            + ("Both models are wrong: overlapping structures may mislead them; a reader should check the "
               "costophrenic angles and the cardiac border." if case.get("type") == "hard" else
               "The models' heatmaps are compared box by box below."))
    return json.dumps({"explanation": text, "boxes": boxes, "verdict": verdict})


INVALID_ANSWER = json.dumps({"verdict": "MUCH BETTER", "explanation": "Looks fine.",
                             "boxes": [{"model": "baseline", "box_id": "B1", "relevant": "yes"}]})


class StubLLM:
    def __init__(self, key: str = "sk-test-secret-123456", mode: str = "ok",
                 answer: str = "Both models attend to the lower right zone.", reject_response_format: bool = False,
                 delay: float = 5.0):
        self.key, self.mode, self.answer = key, mode, answer
        self.reject_response_format, self.delay = reject_response_format, delay
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                if stub.mode == "slow":
                    time.sleep(stub.delay)
                if self.headers.get("Authorization") != f"Bearer {stub.key}" or stub.mode == "401":
                    self._send(401, {"error": {"message": f"Incorrect API key provided: {self.headers.get('Authorization', '')[7:]}",
                                               "type": "invalid_request_error", "code": "invalid_api_key"}})
                    return
                if stub.reject_response_format and "response_format" in body:
                    self._send(400, {"error": {"message": "response_format is not supported by this server",
                                               "type": "invalid_request_error", "param": "response_format"}})
                    return
                if stub.mode == "garbage":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(b"data: {not json at all\n\n")
                    return
                text = {"review": review_answer, "stall": review_answer}.get(stub.mode, lambda b: stub.answer)(body)
                if stub.mode == "invalid":
                    text = INVALID_ANSWER
                if not body.get("stream"):
                    self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body.get("model"),
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if stub.mode == "refuse":  # structured output's refusal field instead of content
                    self._chunk(body, {"refusal": "I can't help with that."}, None)
                    self._chunk(body, {}, "stop")
                    self._write(b"data: [DONE]\n\n")
                    return
                words = text.split(" ")
                for i, w in enumerate(words):
                    if stub.mode == "stall" and i == len(words) // 2:
                        time.sleep(stub.delay)
                    self._chunk(body, {"content": w + (" " if i < len(words) - 1 else "")}, None)
                self._chunk(body, {}, "stop")
                self._write(b"data: [DONE]\n\n")

            def _chunk(self, body, delta, finish):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self._write(f"data: {json.dumps(chunk)}\n\n".encode())

            def _write(self, data: bytes):
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "StubLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
