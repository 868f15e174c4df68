"""A local OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

It records every request (path, Authorization header, all headers, body), checks the Authorization
header, and answers in one of several modes: a streamed (SSE) answer, HTTP 401, garbage, or a slow answer.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubLLM:
    def __init__(self, key: str = "sk-test-secret-123456", mode: str = "ok", answer: str = "Both models attend to the lower right zone."):
        self.key, self.mode, self.answer = key, mode, answer
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
                    time.sleep(5)
                if self.headers.get("Authorization") != f"Bearer {stub.key}" or stub.mode == "401":
                    self._send(401, {"error": {"message": f"Incorrect API key provided: {self.headers.get('Authorization', '')[7:]}",
                                               "type": "invalid_request_error", "code": "invalid_api_key"}})
                    return
                if stub.mode == "garbage":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(b"data: {not json at all\n\n")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = stub.answer.split(" ")
                for i, w in enumerate(words):
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                             "choices": [{"index": 0, "delta": {"content": w + (" " if i < len(words) - 1 else "")},
                                          "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
