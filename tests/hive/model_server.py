"""A real HTTP server on loopback that speaks OpenAI's chat-completions
schema, for the AI triage tests: it answers in the mode it is set to and
keeps every request it received (headers and JSON body) and counts every
connection made to it."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from typing import Any

VERDICT = {"severity": "high", "techniques": ["T1059.004", "T1105"],
           "explanation": "A shell fetched and ran a script from a remote host.", "playbook": "reverse-shell",
           "confidence": 0.9}

MODES = ("valid", "malformed", "schema", "slow", "flaky", "error")
"""valid: a verdict; malformed: content that is not JSON; schema: JSON that
fails the schema; slow: the valid answer after ``delay`` seconds; flaky:
HTTP 500 for the first ``failures`` requests, then valid; error: always 500."""


def completion(content: str, model: str = "test-model-1") -> bytes:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                       "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


class ModelServer:
    def __init__(self, mode: str = "valid", *, delay: float = 3.0, failures: int = 1,
                 verdict: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.delay = delay
        self.failures = failures
        self.verdict = dict(verdict or VERDICT)
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.connections = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner._lock:
                    owner.paths.append(self.path)
                    owner.headers.append(dict(self.headers))
                    owner.requests.append(json.loads(raw))
                    n = len(owner.requests)
                status, body = owner._answer(n)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up (slow mode)
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                with owner._lock:
                    owner.connections += 1
                return True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, n: int) -> tuple[int, bytes]:
        mode = self.mode
        if mode == "malformed":
            return 200, completion('{"severity": "high", "techniques": [')
        if mode == "schema":
            return 200, completion(json.dumps({**self.verdict, "severity": "apocalyptic", "confidence": 7}))
        if mode == "slow":
            time.sleep(self.delay)
        if mode == "error" or (mode == "flaky" and n <= self.failures):
            return 500, b'{"error": {"message": "the model is loading"}}'
        return 200, completion(json.dumps(self.verdict))

    def user_messages(self) -> list[str]:
        """The summary text of each request received."""
        return [m["content"] for r in self.requests for m in r["messages"] if m["role"] == "user"]

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
