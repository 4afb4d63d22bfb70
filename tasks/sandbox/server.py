"""The base of every local contract server: a real HTTP server on loopback that enforces one
platform's documented contract (destinations.md) so clients are tested against HTTP, not mocks.

A platform server subclasses ``ContractServer``, declares routes and keeps the platform's state
(lists, members, jobs). The base records every request (for "no member was added twice" checks
across fault tests), enforces nothing by itself, and plays injected faults first: a 429 storm,
500s, or a response slower than the client's timeout.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON; bytes/str sent as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Fault:
    """Played instead of the real handler for the next ``times`` matching requests."""

    response: Response
    times: int = 1
    path: str = ""  # prefix of the request path this fault applies to ("" = any)
    method: str | None = None
    delay: float = 0.0  # seconds to stall before answering (a timeout when above the client's)


@dataclass
class Recorded:
    request: Request
    status: int
    faulted: bool


Handler = Callable[[Request, "re.Match[str]"], Response]


class ContractServer:
    platform = "base"
    base_path: ClassVar[str] = ""  # the API root under the server's URL (Brevo "/v3", Mailchimp "/3.0", ...)

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.recorded: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.lock = threading.RLock()
        # identifier -> times the server accepted it into / out of an audience (for duplicate checks)
        self.added: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body leave in two writes: without TCP_NODELAY each answer waits out a delayed ACK (40 ms)
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                server._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """What a client's ``base_url`` option points at: the server's URL and the platform's ``base_path``."""
        return f"{self.url}{self.base_path}"

    def reset(self) -> None:
        """Forget all state, recordings, counters and pending faults (one server can serve many tests)."""
        with self.lock:
            self.recorded.clear()
            self.faults.clear()
            self.added.clear()
            self.removed.clear()
            self.reset_state()

    def reset_state(self) -> None:
        """Put the platform's own state back as a fresh server holds it (called by ``reset``)."""
        raise NotImplementedError(f"the {self.platform} server cannot be reset: start a new one per test")

    # --- declaration helpers -----------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def inject(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def fail_next(
        self, response: Response, times: int = 1, path: str = "", headers: dict[str, str] | None = None
    ) -> None:
        """The next ``times`` requests under ``path`` get ``response`` (plus ``headers``): a throttle or a 5xx."""
        if headers:
            response.headers = {**response.headers, **headers}
        self.inject(Fault(response, times=times, path=path))

    def requests_to(self, method: str, path_prefix: str = "") -> list[Request]:
        return [
            r.request for r in self.recorded if r.request.method == method and r.request.path.startswith(path_prefix)
        ]

    # --- dispatch ----------------------------------------------------------------------------
    def _take_fault(self, req: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if req.path.startswith(fault.path) and fault.method in (None, req.method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        req = Request(h.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in h.headers.items()}, body)
        fault = self._take_fault(req)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            resp, faulted = fault.response, True
        else:
            faulted = False
            resp = Response(404, {"error": f"no route {req.method} {req.path}"})
            for method, pattern, handler in self.routes:
                m = pattern.match(req.path)
                if m and method == req.method:
                    with self.lock:
                        try:
                            resp = handler(req, m)
                        except Exception as exc:  # a server bug must show up as a failing test, not a hang
                            resp = Response(500, {"error": f"contract server error: {exc!r}"})
                    break
        with self.lock:
            self.recorded.append(Recorded(req, resp.status, faulted))
        if isinstance(resp.body, bytes):
            payload = resp.body
        elif isinstance(resp.body, str):
            payload = resp.body.encode()
        elif resp.body is None:
            payload = b""
        else:
            payload = json.dumps(resp.body).encode()
        try:
            h.send_response(resp.status)
            h.send_header("Content-Type", resp.content_type)
            h.send_header("Content-Length", str(len(payload)))
            for k, v in resp.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass
