"""The TUI's only way to the hub: its HTTP and WebSocket API (hub/api.py, live.py, replay.py,
export.py, stats.py, mapping.py, alerts.py), with the bearer token.

Every failure becomes one of three exceptions the UI can show in a sentence and act on:
`Unauthorized` (wrong or missing token: say so, keep retrying slowly), `Unreachable` (hub down,
port-forward gone: say so, reconnect with backoff), `Rejected` (the hub refused the request, with
`position`/`expected` for a filter that does not parse, shown inline in the filter bar).

The streams (`live`, `replay`) are async iterators of `Event`s; `live` reconnects by itself after
a drop, announcing it with `Status` events, so the caller just keeps iterating. Summaries are
decoded into `dissect.model.Call` (the one record every front end shares); the service map and the
alerts into the typed answers below (`ServiceMap`, `Alerts`), so a hub of another version that
answers in another shape is one clear `HubError`, not a KeyError deep in a screen.

TLS: an https:// hub is reached with the `ssl.SSLContext` the command built from its options (the
TUI imports nothing of ours but `dissect`, so the context and the `explain` function that turns a
TLS failure into a sentence naming the option come from `podshark/`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl as _ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from dissect.model import Call
from dissect.pcapng_write import estimated_size

RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0
CHUNK = 1 << 16
_T = TypeVar("_T")


class HubError(Exception):
    """Something the hub or the way to it did not allow; `str()` is a sentence for the user."""


class Unauthorized(HubError):
    pass


class Unreachable(HubError):
    pass


class Rejected(HubError):
    """A 400: bad filter (with position and expected) or bad parameter."""

    def __init__(self, message: str, position: int | None = None, expected: str | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.expected = expected


class NotFound(Rejected):
    """A 404: no such call, or an endpoint this hub does not have (an older hub)."""


# ---- stream events


@dataclass
class Calls:
    calls: list[Call]


@dataclass
class Missed:
    count: int


@dataclass
class Status:
    """Connection state of a stream: `connected`, `reconnecting` (with the reason), `unauthorized`."""

    state: str
    detail: str = ""


@dataclass
class Progress:
    """Replay position (capture time, ns) and how many calls were sent."""

    position: int | None
    sent: int
    paused: bool = False


@dataclass
class End:
    calls: int


@dataclass
class FilterApplied:
    filter: str
    canonical: str


@dataclass
class StreamError:
    message: str
    position: int | None = None
    expected: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Event = Calls | Missed | Status | Progress | End | FilterApplied | StreamError


class _Page(msgspec.Struct):
    calls: list[Call]
    next_cursor: str | None = None


class _Type(msgspec.Struct):
    type: str = ""


class _CallsMessage(msgspec.Struct):
    calls: list[Call] = []


# ---- the service map and the alerts (GET /api/v1/map, GET /api/v1/alerts)


class MapNode(msgspec.Struct, frozen=True):
    """A node of the service map (`hub/nodes.py`'s MapNode): `id` is `kind`-specific
    (`shop/Deployment/web`, `shop/pod/debug`, `ip/10.1.0.21`, `external/93.184.216.34`, `other`)."""

    id: str
    kind: str = ""
    namespace: str | None = None
    name: str = ""
    external: bool = False


class MapEdge(msgspec.Struct, frozen=True):
    """One (client node, server node, protocol, transport) over the map's window. `filter` is the
    filter-language expression selecting exactly its calls, or None when none can (see
    `ServiceMap.unfilterable_reason`)."""

    src: str
    dst: str
    protocol: str | None = None
    transport: str = ""
    calls: int = 0
    calls_per_s: float = 0.0
    errors: int = 0
    error_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    bytes: list[int] = []  # [client->server, server->client]
    bytes_per_s: float = 0.0
    connections: int = 0
    status: dict[str, int] = {}
    filter: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies the edge from one refresh to the next."""
        return (self.src, self.dst, self.protocol or "", self.transport)


class ServiceMap(msgspec.Struct, frozen=True):
    """The answer of `GET /api/v1/map`: edges busiest first, at most the `limit` asked for."""

    from_ns: int = msgspec.field(name="from")
    to_ns: int = msgspec.field(name="to")
    seconds: float = 0.0
    source: str = ""
    edges_omitted: int = 0
    nodes: list[MapNode] = []
    edges: list[MapEdge] = []

    def node(self, node_id: str) -> MapNode:
        """The node named `node_id` (a bare one when the hub did not list it)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        return MapNode(node_id, external=node_id.startswith("external/"))

    def unfilterable_reason(self, edge: MapEdge) -> str:
        """Why `edge` has no filter, in a sentence for the user."""
        if "other" in (self.node(edge.src).kind, self.node(edge.dst).kind) or "other" in (edge.src, edge.dst):
            return (
                "it is the aggregates' overflow edge 'other', which folds the traffic of many nodes past "
                "the hub's bounds: narrow the view with a filter (/) to see its calls"
            )
        return "a name in it cannot be written in the filter language: filter on the address instead (/)"


class AlertRule(msgspec.Struct, frozen=True):
    """One rule of the hub's rules file and its state now (`hub/alerts.py`)."""

    name: str
    description: str | None = None
    measure: str = ""
    filter: str | None = None  # call measures: the calls it counts ("" or None: every call)
    edges: dict[str, str] | None = None  # flow measures: {"src": glob, "dst": glob} on map node ids
    condition: str = ""  # "above 50", "3x baseline (min 5)"
    state: str = "ok"  # ok | pending | firing
    value: float | None = None
    threshold: float | None = None
    since: int | None = None  # ns: when the rule entered its state


class AlertEvent(msgspec.Struct, frozen=True):
    """A rule started firing or resolved."""

    rule: str
    state: str  # firing | resolved
    ts: int
    value: float | None = None
    threshold: float | None = None


class _AlertsBody(msgspec.Struct):
    rules: list[AlertRule] = []
    events: list[AlertEvent] = []


@dataclass(frozen=True)
class Alerts:
    """The answer of `GET /api/v1/alerts`; `supported=False` for a hub that has no such endpoint
    (older than alerts: the same as no rules configured)."""

    rules: list[AlertRule]
    events: list[AlertEvent]  # newest first
    supported: bool = True

    @property
    def firing(self) -> int:
        return sum(r.state == "firing" for r in self.rules)

    @property
    def pending(self) -> int:
        return sum(r.state == "pending" for r in self.rules)


MAP_LIMIT = 1000  # edges asked for; the rest are counted in `edges_omitted`

_PAGE = msgspec.json.Decoder(_Page)
_CALL = msgspec.json.Decoder(Call)
_TYPE = msgspec.json.Decoder(_Type)
_CALLS_MESSAGE = msgspec.json.Decoder(_CallsMessage)
_MESSAGE = msgspec.json.Decoder(dict[str, Any])
_MAP = msgspec.json.Decoder(ServiceMap)
_ALERTS = msgspec.json.Decoder(_AlertsBody)


def _query(**params: object) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if v is not None and v != ""}


Explain = Callable[[BaseException], str | None]


class HubClient:
    """One aiohttp session to one hub. Create it inside the event loop that uses it."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 30.0,
        *,
        ssl: _ssl.SSLContext | None = None,
        explain: Explain | None = None,
    ) -> None:
        """`ssl`: the TLS context for an https:// hub (None: the system's CAs). `explain(exc)`: a
        sentence for a connection failure that names its fix (a TLS option), or None."""
        self.url = url.rstrip("/")
        self.token = token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout * 4)
        self._session: aiohttp.ClientSession | None = None
        self._ssl = ssl
        self._explain = explain

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, connector=connector
            )
        return self._session

    def _unreachable(self, e: BaseException, what: str) -> str:
        """The sentence for a failed connection: the TLS fix when `explain` knows one."""
        hint = self._explain(e) if self._explain is not None else None
        return hint or f"{what}: {e or type(e).__name__}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def ws_url(self, path: str) -> str:
        base = self.url
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + path

    # ---- REST

    async def _get(self, path: str, params: dict[str, str]) -> bytes:
        try:
            async with self.session.get(self.url + path, params=params) as r:
                body = await r.read()
                if r.status == 200:
                    return body
                raise _error(r.status, body)
        except HubError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise Unreachable(self._unreachable(e, f"cannot reach the hub at {self.url}")) from None

    async def healthz(self) -> bool:
        try:
            await self._get("/healthz", {})
        except HubError:
            return False
        return True

    async def calls(
        self,
        filter: str = "",
        *,
        from_ns: int | None = None,
        to_ns: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: str = "desc",
    ) -> tuple[list[Call], str | None]:
        """One page of summaries (no bodies) and the cursor of the next page (None at the end)."""
        body = await self._get(
            "/api/v1/calls",
            _query(filter=filter, limit=limit, cursor=cursor, order=order, **{"from": from_ns, "to": to_ns}),
        )
        page = _PAGE.decode(body)
        return page.calls, page.next_cursor

    async def call(self, call_id: str) -> Call:
        """The whole call, bodies included."""
        from urllib.parse import quote

        return _CALL.decode(await self._get("/api/v1/calls/" + quote(call_id, safe="/"), {}))

    async def stats(
        self,
        filter: str = "",
        *,
        from_ns: int | None = None,
        to_ns: int | None = None,
        buckets: int = 60,
        top: int = 10,
    ) -> dict[str, Any]:
        body = await self._get(
            "/api/v1/stats",
            _query(filter=filter, buckets=buckets, top=top, **{"from": from_ns, "to": to_ns}),
        )
        out: dict[str, Any] = json.loads(body)
        return out

    async def map(
        self,
        filter: str = "",
        *,
        from_ns: int | None = None,
        to_ns: int | None = None,
        limit: int = MAP_LIMIT,
    ) -> ServiceMap:
        """The service map of the window (the hub's default: the last 15 minutes) for `filter`:
        from the aggregates without a filter, from the matching calls with one."""
        body = await self._get(
            "/api/v1/map", _query(filter=filter, limit=limit, **{"from": from_ns, "to": to_ns})
        )
        return _decode(_MAP, body, "map")

    async def alerts(self) -> Alerts:
        """The alert rules' states and the recent events. A hub without the endpoint (404: older
        than alerts) has none configured: an empty answer with `supported=False`, not an error."""
        try:
            body = await self._get("/api/v1/alerts", {})
        except NotFound:
            return Alerts([], [], supported=False)
        got = _decode(_ALERTS, body, "alerts")
        return Alerts(got.rules, sorted(got.events, key=lambda e: e.ts, reverse=True))

    async def export(
        self,
        path: Path,
        filter: str = "",
        *,
        from_ns: int | None = None,
        to_ns: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> tuple[int, int]:
        """Download a pcapng to `path` (via `path.partial`, renamed when complete); returns
        (frames the hub announced, bytes written). `progress(done_bytes, total_bytes_or_None)`."""
        params = _query(filter=filter, **{"from": from_ns, "to": to_ns})
        partial = path.with_name(path.name + ".partial")
        try:
            async with self.session.get(self.url + "/api/v1/export", params=params) as r:
                if r.status != 200:
                    raise _error(r.status, await r.read())
                frames = int(r.headers.get("X-Podshark-Frames", "0") or 0)
                payload = r.headers.get("X-Podshark-Bytes")
                total = estimated_size(frames, int(payload)) if payload else None
                done = 0
                with partial.open("wb") as out:
                    async for piece in r.content.iter_chunked(CHUNK):
                        out.write(piece)
                        done += len(piece)
                        if progress is not None:
                            progress(done, total)
        except HubError:
            partial.unlink(missing_ok=True)
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            partial.unlink(missing_ok=True)
            raise Unreachable(self._unreachable(e, f"export from {self.url} failed")) from None
        partial.replace(path)
        return frames, done

    # ---- streams

    async def live(self, filter: str = "") -> AsyncIterator[Event]:
        """New matching calls as the hub stores them, forever: reconnects after a drop (with
        backoff), saying so with `Status` events. A filter the hub refuses ends the stream with
        `Rejected`; a refused token is reported as `Status("unauthorized")` and retried slowly."""
        delay = RECONNECT_MIN
        while True:
            try:
                async with self.session.ws_connect(
                    self.ws_url("/api/v1/live"), params=_query(filter=filter), heartbeat=20.0, max_msg_size=0
                ) as ws:
                    delay = RECONNECT_MIN
                    yield Status("connected")
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        event = _event(msg.data)
                        if event is not None:
                            yield event
                reason = "the hub closed the live stream"
            except aiohttp.WSServerHandshakeError as e:
                if e.status == 401:
                    yield Status("unauthorized", "the hub refused the token (401): check PODSHARK_TOKEN")
                    reason = "unauthorized"
                    delay = RECONNECT_MAX
                elif e.status == 400:
                    raise Rejected("the hub refused the filter") from None
                elif e.status == 403:
                    reason = "the hub requires a client certificate (403): start the UI with --cert and --key"
                    delay = RECONNECT_MAX
                else:
                    reason = f"the hub answered {e.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                reason = self._unreachable(e, f"cannot reach the hub at {self.url}")
            yield Status("reconnecting", reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def replay(
        self,
        from_ns: int,
        to_ns: int,
        speed: float | None,
        filter: str = "",
        control: asyncio.Queue[dict[str, Any]] | None = None,
    ) -> AsyncIterator[Event]:
        """A past window in its own timing (`speed=None`: as fast as possible), ending with `End`.
        Messages put on `control` ({"type": "pause"} / "resume" / {"type": "speed", ...}) are sent
        to the hub. Errors raise (`Rejected` for bad parameters) instead of reconnecting: a replay
        is a finite thing the user asked for."""
        params = _query(
            filter=filter, speed="max" if speed is None else speed, **{"from": from_ns, "to": to_ns}
        )
        try:
            async with self.session.ws_connect(
                self.ws_url("/api/v1/replay"), params=params, heartbeat=20.0, max_msg_size=0
            ) as ws:
                sender: asyncio.Task[None] | None = None
                if control is not None:
                    sender = asyncio.get_running_loop().create_task(_forward(control, ws))
                try:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        event = _event(msg.data)
                        if event is not None:
                            yield event
                            if isinstance(event, End):
                                return
                finally:
                    if sender is not None:
                        sender.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sender
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 401:
                raise Unauthorized("the hub refused the token (401): check PODSHARK_TOKEN") from None
            if e.status == 400:
                raise Rejected(f"the hub refused the replay: {e.message}") from None
            if e.status == 403:
                raise HubError(
                    "the hub requires a client certificate (403): start the UI with --cert and --key"
                ) from None
            raise HubError(f"the hub answered {e.status}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise Unreachable(self._unreachable(e, f"replay from {self.url} failed")) from None
        raise Unreachable("the replay ended before its end message")


async def _forward(control: asyncio.Queue[dict[str, Any]], ws: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        msg = await control.get()
        await ws.send_str(json.dumps(msg))


def _event(data: str) -> Event | None:
    """One server message as an event (None for messages the TUI does not use)."""
    kind = _TYPE.decode(data).type
    if kind == "calls":  # the hot path: typed decoding straight into Calls
        return Calls(_CALLS_MESSAGE.decode(data).calls)
    msg = _MESSAGE.decode(data)
    if kind == "missed":
        return Missed(int(msg.get("count", 0)))
    if kind == "progress":
        return Progress(msg.get("position"), int(msg.get("sent", 0)), bool(msg.get("paused", False)))
    if kind == "end":
        return End(int(msg.get("calls", 0)))
    if kind == "filter":
        return FilterApplied(str(msg.get("filter", "")), str(msg.get("canonical", "")))
    if kind == "error":
        return StreamError(str(msg.get("error", "")), msg.get("position"), msg.get("expected"))
    return None


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes, what: str) -> _T:
    """`body` decoded, or a HubError saying the answer is not one this UI understands."""
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise HubError(
            f"the hub's {what} answer is not one this UI understands ({e}): "
            "are the hub and podshark ui the same version?"
        ) from None


def _error(status: int, body: bytes) -> HubError:
    try:
        err = json.loads(body)
    except ValueError:
        err = {}
    if not isinstance(err, dict):
        err = {}
    message = str(err.get("error") or body[:200].decode(errors="replace") or f"HTTP {status}")
    if status == 401:
        return Unauthorized("the hub refused the token (401): check PODSHARK_TOKEN or --token-file")
    if status == 404:
        return NotFound(message, err.get("position"), err.get("expected"))
    if status == 400:
        return Rejected(message, err.get("position"), err.get("expected"))
    return HubError(f"the hub answered {status}: {message}")
