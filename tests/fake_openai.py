"""A fake OpenAI-compatible chat server for measuring the executor, not a model.

It answers ``POST /v1/chat/completions`` after a fixed latency with a canned
customer-support reply, and ``GET /v1/models``. Replies are drawn from the
request's seed and system prompt, so the same request always gets the same
reply and policies differ in quality: a system prompt containing ``"GOOD"``
gets a reply that passes the support checklist with probability ``good_rate``,
any other prompt with probability ``bad_rate``. Every request is logged (system
prompt, user prompt, seed) so tests can check which generations were asked for.

Usage::

    with FakeOpenAIServer(latency_s=0.2) as server:
        ...  # point policies at server.base_url
        server.requests  # list of (system, user, seed)

Run as a script to serve in the foreground: ``python fake_openai.py PORT``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_REPLY = (
    "Thank you for writing about order {order}. I have asked the warehouse to "
    "check it and we will email you an update within 24 hours."
)
BAD_REPLY = "We are so sorry! Here is a refund and a discount for your trouble."


class FakeOpenAIServer:
    """Canned OpenAI-compatible server on 127.0.0.1 and a free port.

    Parameters
    ----------
    latency_s : float
        Time each completion takes.
    good_rate, bad_rate : float
        Probability that a reply passes the checklist, for system prompts with
        and without ``"GOOD"``.
    port : int
        0 for a free port.
    """

    def __init__(
        self,
        latency_s: float = 0.2,
        *,
        good_rate: float = 0.85,
        bad_rate: float = 0.3,
        port: int = 0,
    ):
        self.latency_s = latency_s
        self.good_rate = good_rate
        self.bad_rate = bad_rate
        self.requests: list[tuple[str, str, int | None]] = []
        # Completions being answered now, and the most at once since the last
        # reset: how far a client overlaps its requests.
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm the
            # second waits for a delayed ACK (40 ms) on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                # Logged on arrival: a request whose client is killed while it
                # waits was still asked for.
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply = server.respond(request, self.headers)
                    time.sleep(server.latency_s)
                    try:
                        self._send(status, reply)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def respond(self, request: dict, headers) -> tuple[int, dict]:
        """HTTP status and JSON body answering ``request``; subclasses that
        answer some requests with errors override this."""
        return 200, self.completion(request)

    def completion(self, request: dict) -> dict:
        """The canned completion answering ``request``."""
        messages = request.get("messages", [])
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        seed = request.get("seed")
        with self._lock:
            self.requests.append((system, user, seed))
        digest = hashlib.sha256(f"{system}|{user}|{seed}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2.0**64
        rate = self.good_rate if "GOOD" in system else self.bad_rate
        order = re.search(r"\d{4,}", user)
        text = (
            GOOD_REPLY.format(order=order.group(0) if order else "you placed")
            if draw < rate
            else BAD_REPLY
        )
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 20,
                "completion_tokens": len(text.split()),
                "total_tokens": 20 + len(text.split()),
            },
        }

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    with FakeOpenAIServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()
