"""The server's guard against one visitor spoiling it for everyone (gradio 6.31).

* **Fair queueing** (``cap_queue``): model runs (``MODEL_EVENTS``, one concurrency group) may fill
  at most half the waiting queue, so redraws always find room; the one very expensive event, the
  latency chart (``HEAVY_EVENTS``), runs one at a time with at most ``HEAVY_WAITING`` waiting, so it
  cannot crowd out anyone's Run; one session may have at most ``PER_SESSION`` events of a group
  waiting, and (``--max-queued-per-address``) one address too.
* **Abandoned events are dropped** (``sweep_unheard``): an event, waiting or running, whose session
  has had no open result stream for ``GRACE`` seconds (a client that joins and never listens, or
  has left) is cleaned out; a long handler asks ``client_gone()`` between its steps and stops early.
* **Routes the page never needs** (file uploads, recordings, deep links) answer 404; an unknown
  API name answers 404 instead of 500 (``not_found``).
* **The login page reveals nothing**: with ``--auth`` its embedded API description (endpoint
  names, defaults, the model and folder lists) is emptied until the visitor has logged in.
* **Repeated failed logins are slowed** (``make_auth`` waits a second after a wrong password,
  without blocking the server) and, past ``LOGIN_FAILURES`` a minute from one address, refused.

``cap_queue``, ``sweep_unheard`` and ``client_gone`` read gradio's queue (``demo._queue``), which
is not public API: ``tests/test_guard.py`` checks each behaviour against the installed gradio.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import re
import time
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import parse_qs

import plotly
from fastapi import HTTPException
from starlette.responses import JSONResponse

API = "/gradio_api"
BLOCKED = {f"{API}/upload", f"{API}/upload_progress", f"{API}/process_recording", f"{API}/deep_link"}
MODEL_EVENTS = "model"  # the concurrency group of the events that run a model
HEAVY_EVENTS = "heavy"  # the latency chart: many forward passes up to 2,048 tokens, one at a time
HEAVY_WAITING = 4  # latency charts that may wait, from everyone together
PER_SESSION = 4  # events of one group one session may have waiting
GRACE = 15.0  # seconds a waiting event may go without anyone listening for its result
LOGIN_FAILURES, LOGIN_WINDOW, LOGIN_DELAY = 5, 60.0, 1.0
EMPTY_API_INFO = b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}};</script>'
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)

OPEN_STREAMS: defaultdict[str, int] = defaultdict(int)  # session_hash -> open /queue/data streams


class Guard:
    """Pure ASGI middleware (the queue's event streams pass through untouched); give it to
    ``launch(app_kwargs={"middleware": [Middleware(Guard)]})``."""

    def __init__(self, app):
        self.app = app
        self.failures: defaultdict[str, deque] = defaultdict(deque)  # address -> times of wrong passwords

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        if path in BLOCKED:
            return await _plain(send, 404, "Not Found")
        if path == "/login" and method == "POST":
            return await self._login(scope, receive, send)
        if path == "/" and method == "GET":
            return await self._page(scope, receive, send)
        if path == PLOTLY_JS and method == "GET":
            return await _script(send, _plotly_source())
        if path == f"{API}/queue/data":
            session = _query(scope, "session_hash")
            OPEN_STREAMS[session] += 1
            try:
                return await self.app(scope, receive, send)
            finally:
                OPEN_STREAMS[session] -= 1
                if OPEN_STREAMS[session] <= 0:
                    del OPEN_STREAMS[session]
        return await self.app(scope, receive, send)

    async def _login(self, scope, receive, send):
        address, now = _address(scope), time.monotonic()
        recent = self.failures[address]
        while recent and now - recent[0] > LOGIN_WINDOW:
            recent.popleft()
        if len(recent) >= LOGIN_FAILURES:
            wait = int(LOGIN_WINDOW - (now - recent[0])) + 1
            return await _plain(send, 429, "Too many failed logins; try again in a minute.",
                                [(b"retry-after", str(wait).encode())])  # fmt: skip
        status = 0

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status == 400:  # gradio's "Incorrect credentials"
            recent.append(time.monotonic())
        elif status == 200:
            self.failures.pop(address, None)

    async def _page(self, scope, receive, send):
        """The login page (``auth_required``) goes out without the API description."""
        start, chunks = None, []

        async def hold(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if b'"auth_required":true' in body:
                body = _API_INFO.sub(EMPTY_API_INFO, body, count=1)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, hold)


def cap_queue(demo, *, total: int, per_session: int = PER_SESSION, per_address: int = 0) -> None:
    """Refuse a join (the page shows "busy") when ``total`` events wait, or half of them are model
    runs and this is one, or this session (``per_session``) or address (``per_address``, 0 = no
    limit) already has that many of the event's group waiting. An unknown endpoint is a 404."""
    queue = demo._queue
    queue.max_size = None  # counted here instead
    original = queue.push

    async def push(body, request, username):
        fn = demo.fns.get(body.fn_index) if body.fn_index is not None else None
        if fn is None:  # gradio would raise KeyError: an HTTP 500
            raise HTTPException(status_code=404, detail="Not Found")
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        group = [e for e in waiting if e.concurrency_id == fn.concurrency_id]
        address = request.client.host if request.client else "?"
        if len(waiting) >= total:
            return False, "The server is busy: the queue is full. Try again in a moment.", "queue_full"
        if fn.concurrency_id == MODEL_EVENTS and len(group) >= total // 2:
            return False, "The server is busy running models. Try again in a moment.", "queue_full"
        if fn.concurrency_id == HEAVY_EVENTS and len(group) >= HEAVY_WAITING:
            return False, "Other latency measurements are waiting; try again in a minute.", "queue_full"
        if sum(e.session_hash == body.session_hash for e in group) >= per_session:
            return False, f"At most {per_session} of these may wait at once; wait for the last ones.", "queue_full"
        if per_address and sum(_host(e) == address for e in group) >= per_address:
            return False, "Too many waiting requests from this address; try again in a moment.", "queue_full"
        return await original(body, request, username)

    queue.push = push


async def sweep_unheard(demo, *, grace: float = GRACE, every: float = 5.0, also=None) -> None:
    """Forever: every ``every`` seconds drop the events (waiting, or running: they are told to stop)
    whose session has no open result stream and that joined more than ``grace`` seconds ago; then
    call ``also()`` (e.g. a memory trim)."""
    queue = demo._queue
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        running = [job for jobs in queue.active_jobs if jobs for job in jobs if job.alive]
        stale = {e.session_hash for e in waiting + running
                 if now - e.enqueue_time > grace and OPEN_STREAMS.get(e.session_hash, 0) == 0}  # fmt: skip
        for session in stale:
            await queue.clean_events(session_hash=session)
        if also is not None:
            await asyncio.to_thread(also)  # off the event loop: trimming a large heap takes a while


def client_gone() -> bool:
    """Inside a queued handler: whether gradio has given up on this event (its client closed the
    result stream, the sweeper dropped it, or the visitor pressed Stop)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    if blocks is None or event_id is None or blocks._queue is None:
        return False
    event = blocks._queue.event_ids_to_events.get(event_id)
    return event is None or not event.alive


async def not_found(request, exc):
    """An exception handler: an unknown API name is a 404 (gradio raises KeyError or FnIndexInferError)."""
    if isinstance(exc, KeyError) and not request.url.path.startswith(f"{API}/call/"):
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
    return JSONResponse({"detail": "Not Found"}, status_code=404)


def make_auth(user: str, password: str, delay: float = LOGIN_DELAY):
    """``launch(auth=...)``: a constant-time check that waits ``delay`` seconds after a wrong password.
    A coroutine on purpose: gradio awaits it, where a plain function's sleep would stall the server."""

    async def check(username: str, given: str) -> bool:
        ok = hmac.compare_digest(str(username).encode(), user.encode())
        ok &= hmac.compare_digest(str(given).encode(), password.encode())
        if not ok:
            await asyncio.sleep(delay)
        return ok

    return check


def _address(scope) -> str:
    return (scope.get("client") or ("?", 0))[0]


def _host(event) -> str:
    request = getattr(event, "request", None)
    client = getattr(request, "client", None)
    return client.host if client else "?"


def _query(scope, key: str) -> str:
    return (parse_qs(scope.get("query_string", b"").decode()).get(key) or [""])[0]


PLOTLY_JS = "/archplay/plotly.min.js"  # plotly.js itself, for the page's standalone HTML exports


@functools.cache
def _plotly_source() -> bytes:
    """The plotly.js that the plotly package ships (read once): an exported plot carries it inline."""
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


async def _script(send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/javascript; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"public, max-age=86400")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def _plain(send, status: int, text: str, headers=()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


__all__ = ["HEAVY_EVENTS", "MODEL_EVENTS", "Guard", "cap_queue", "client_gone", "make_auth", "not_found", "sweep_unheard"]
