"""A fault-injecting proxy in front of an OpenAI-compatible server, for tests.

Each POST request draws, from a seeded generator, whether to inject a fault and
which one; everything else is forwarded to the upstream server unchanged. The
kinds of fault:

- ``"429"``, ``"500"`` or any other status code: that status with an
  OpenAI-style error body, without asking upstream;
- ``"hang"``: no answer for ``hang_s`` seconds, then the connection closes
  (longer than the client's timeout, so the client gives up first);
- ``"malformed"``: status 200 with a JSON content type and a body that is not
  JSON;
- ``"truncated"``: a valid completion cut in half, its ``Content-Length``
  promising the whole;
- ``"verdict"``: the upstream answer with its text replaced by
  :data:`UNPARSABLE_VERDICT`, for judges.

Usage::

    with FaultyServer(upstream, rate=0.5, kinds=("429", "500"), seed=1) as proxy:
        ...  # point the client at proxy.base_url
        proxy.injected  # Counter of faults injected, by kind

Decisions follow the order in which requests arrive, so they are reproducible
for requests sent one at a time.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALL_KINDS = ("429", "500", "hang", "malformed", "truncated")
UNPARSABLE_VERDICT = "Both answers have merits and flaws; I decline to pick."

_CANNED_COMPLETION = {
    "id": "chatcmpl-injected",
    "object": "chat.completion",
    "created": 0,
    "model": "injected",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "a reply cut short " * 8},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50},
}


class FaultyServer:
    """Fault-injecting OpenAI-compatible proxy on 127.0.0.1 and a free port.

    Parameters
    ----------
    upstream : str
        Base URL of the real server, ending in ``/v1``.
    rate : float
        Probability in [0, 1] that a POST request gets a fault.
    kinds : sequence of str
        Faults to draw from, uniformly (see the module docstring).
    seed : int
        Seed of the fault draws.
    hang_s : float
        How long a ``"hang"`` keeps the client waiting.

    Attributes
    ----------
    base_url : str
        The proxy's base URL (``http://127.0.0.1:<port>/v1``), once started.
    injected : collections.Counter
        Faults injected so far, by kind.
    forwarded : int
        Requests passed to upstream (``"verdict"`` faults included).
    authorizations : list of str
        ``Authorization`` headers received, to check that a key was sent.
    """

    def __init__(
        self,
        upstream: str,
        rate: float,
        kinds: Sequence[str] = ALL_KINDS,
        seed: int = 0,
        *,
        hang_s: float = 5.0,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate: got {rate!r}, expected a number in [0, 1]")
        for kind in kinds:
            if kind not in ("hang", "malformed", "truncated", "verdict") and not (
                kind.isdigit() and len(kind) == 3
            ):
                raise ValueError(f"kinds: got {kind!r}, expected one of "
                                 f"{ALL_KINDS + ('verdict',)} or a status code")
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.hang_s = hang_s
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.authorizations: list[str] = []
        self.base_url = ""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultyServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Listen on a free port and serve in a background thread."""
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faulty-server", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving; requests still hanging are released."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def total_injected(self) -> int:
        """Number of faults injected, all kinds together."""
        return sum(self.injected.values())

    def _draw(self) -> str | None:
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.injected[kind] += 1
            return kind


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultyServer

    def log_message(self, format: str, *args: object) -> None:
        # The default handler writes every request to stderr.
        return

    def do_GET(self) -> None:
        self._forward(b"", method="GET")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.proxy._lock:
            self.proxy.authorizations.append(self.headers.get("Authorization", ""))
        kind = self.proxy._draw()
        if kind is None:
            self._forward(body, method="POST")
        elif kind.isdigit():
            self._send_status(int(kind))
        elif kind == "hang":
            self.proxy._closing.wait(self.proxy.hang_s)
            self.close_connection = True
        elif kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"mess')
        elif kind == "truncated":
            whole = json.dumps(_CANNED_COMPLETION).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole[: len(whole) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif kind == "verdict":
            self._forward(body, method="POST", replace_text=UNPARSABLE_VERDICT)

    def _forward(
        self, body: bytes, *, method: str, replace_text: str | None = None
    ) -> None:
        path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() in ("content-type", "authorization", "accept")
        }
        request = urllib.request.Request(
            self.proxy.upstream + path, data=body or None, headers=headers,
            method=method,
        )
        with self.proxy._lock:
            self.proxy.forwarded += 1
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, payload = response.status, response.read()
                content_type = response.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
            content_type = err.headers.get("Content-Type", "application/json")
        if replace_text is not None and status == 200:
            data = json.loads(payload)
            data["choices"][0]["message"]["content"] = replace_text
            payload = json.dumps(data).encode()
        self._send(status, payload, content_type)

    def _send_status(self, status: int) -> None:
        error = {"error": {"message": f"injected fault: HTTP {status}",
                           "type": "injected", "code": status}}
        self._send(status, json.dumps(error).encode())

    def _send(
        self, status: int, payload: bytes, content_type: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
