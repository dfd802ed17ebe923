"""HTTP/1.x connection dissector: two `MessageParser`s, FIFO pairing, `Call` records out.

Pairing: requests enter a FIFO when their head is complete (so a response can pair with a request
whose body is still streaming); a final response pairs with the oldest entry when its head is
complete (its framing may depend on the request: HEAD, CONNECT); the call is emitted once both
sides are complete. Interim 1xx responses attach to the oldest pending request without completing it.

Losses never shift the pairing silently: a gap that swallowed the start of a response retires the
oldest pending request as ``response-missing``; one that swallowed the start of a request pushes a
placeholder so the next response comes out ``request-missing``. Both carry the ``gap`` (or
``snaplen``) flag.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dissect.base import ConnContext, Handoff
from dissect.http1.parser import (
    F_NONE,
    F_SWITCH,
    HOLD,
    MAX_INTERIM,
    RESYNC,
    SWITCHED,
    HttpMessage,
    MessageParser,
)
from dissect.model import Call, Flag, Message

__all__ = ["HTTP1Dissector"]

# Upgrade token / tunnel -> the analyzer that takes over ("" = detect what the tunnel carries)
_NEXT_PROTOCOL = {"h2c": "http2", "tunnel": ""}


class HTTP1Dissector:
    """One connection's HTTP/1.x dissector (see `dissect.base.Dissector`).

    Public state for a later protocol handoff: after a successful Upgrade (101) or CONNECT (2xx),
    ``switched_to`` names the new protocol ("h2c", "websocket", "tunnel", …) and ``post_switch[d]``
    holds the first ``Limits.detect_window`` bytes direction ``d`` sent after the switch point.
    """

    def __init__(self, ctx: ConnContext, strict: bool = False) -> None:
        self.ctx = ctx
        self.strict = strict  # re-raise internal errors (tests); otherwise they become flags
        limits = ctx.limits
        self.max_pending = max(1, limits.max_pending)
        self.post_switch: tuple[bytearray, bytearray] = (bytearray(), bytearray())
        self.switched_to: str | None = None
        self.upgrade_call: Call | None = None  # the call that showed the switch (h2c: becomes stream 1)
        self.handed_off = False
        resync = not ctx.handshake_seen
        self.parsers = (
            MessageParser(0, self, limits, ctx.budget, self.post_switch[0], resync),
            MessageParser(1, self, limits, ctx.budget, self.post_switch[1], resync),
        )
        self.pending: deque[HttpMessage] = deque()
        # Responses lost at a message boundary while no request was waiting: their requests were
        # lost too, but the request side's gap is often declared later (the reassembler learns of
        # it from the server's ACK). Each credit cancels the placeholder that gap would queue, so
        # pairing does not shift by one.
        self.lost_responses = 0
        self.client_dir: int | None = None
        self._src, self._dst = ctx.endpoints
        self.orphan_interim: list[int] = []
        self.closed = False
        self.internal_errors = 0

    # ------------------------------------------------------------------ Dissector contract
    def feed(self, direction: int, data: bytes, ts: int) -> None:
        if self.closed:
            return
        try:
            self.parsers[direction & 1].feed(data, ts)
        except Exception:
            self._internal_error(direction & 1)
        if self.switched_to is not None and not self.handed_off:
            self._hand_off(ts)

    def _hand_off(self, ts: int) -> None:
        """After a switch, give the connection to the next protocol's dissector (see base.Handoff).

        Done once the feed that completed the switch is over, so ``post_switch`` holds every byte
        of it that followed the switch point (and, moved there by ``switch()``, what the client sent
        early, such as an h2c preface sent before the 101). Protocols with no dissector (websocket)
        stay here, ignored.
        """
        self.handed_off = True
        protocol = _NEXT_PROTOCOL.get(self.switched_to or "")
        switch = self.ctx.switch
        if protocol is None or switch is None:
            return
        pending = (bytes(self.post_switch[0]), bytes(self.post_switch[1]))
        self.close(ts)  # anything still waiting for an answer is flushed now; this dissector is done
        switch(Handoff(protocol, pending, ts, self.client_dir, self.upgrade_call))

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        if self.closed:
            return
        try:
            self.parsers[direction & 1].gap(n, snaplen)
        except Exception:
            self._internal_error(direction & 1)

    def note(self, direction: int, flag: str) -> None:
        if self.closed:
            return
        try:
            self.parsers[direction & 1].note(flag)
        except Exception:
            self._internal_error(direction & 1)

    def close(self, ts: int) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            cd = self.client_dir if self.client_dir is not None else 0
            self.parsers[cd].close()  # requests first, so responses waiting on them can go out
            self.parsers[1 - cd].close()
            self.parsers[cd].close()  # a response may have released held requests
            while self.pending:
                req = self.pending.popleft()
                if not req.placeholder:
                    self._resolve_missing(req)
        except Exception:
            if self.strict:
                raise
            self.internal_errors += 1

    def buffered_bytes(self) -> int:
        """Bytes this dissector holds right now (parser buffers, held/post-switch bytes, bodies)."""
        n = self.parsers[0].buffered_bytes() + self.parsers[1].buffered_bytes()
        for m in self.pending:
            if m.complete:  # one still in progress is its parser's `cur`, counted there
                n += m.kept
        for p in self.parsers:
            cur = p.cur
            if cur is not None and cur.resp is not None:
                n += cur.resp.kept
        return n

    def _internal_error(self, direction: int) -> None:
        """A bug must not take the pipeline down: note it and resynchronise that direction."""
        if self.strict:
            raise
        self.internal_errors += 1
        p = self.parsers[direction]
        try:
            p.cur = None
            p.buf = b""
            p.held = []
            p.held_size = 0
            if p.state != SWITCHED:
                p.state = RESYNC
            p.midline = True
            if Flag.PARSE_ERROR not in p.pending_flags:
                p.pending_flags.append(Flag.PARSE_ERROR)
            if "internal-error" not in p.pending_weird:
                p.pending_weird.append("internal-error")
        except Exception:  # pragma: no cover
            pass

    # ------------------------------------------------------------------ parser events (Sink)
    def on_head(self, parser: MessageParser, msg: HttpMessage) -> None:
        d = parser.direction
        if msg.is_request:
            if self.client_dir is None:
                self._set_client(d)
            pending = self.pending
            if len(pending) >= self.max_pending:
                old = pending.popleft()
                if not old.placeholder:
                    old.add_weird("pending-overflow")
                    self._resolve_missing(old)
            pending.append(msg)
            self.lost_responses = 0  # a request seen after them: those losses were not its own
            return
        if self.client_dir is None:
            self._set_client(1 - d)
        status = msg.status or 0
        if status < 200 and status != 101:  # interim: belongs to the oldest request, completes nothing
            msg.req = self.pending[0] if self.pending else None
            return
        req = self.pending.popleft() if self.pending else None
        if req is not None and req.placeholder:
            for f in req.flags:
                msg.flag(f)
            req = None
        msg.req = req
        if req is None:
            return
        method = req.method
        if method == "HEAD" and msg.framing != F_SWITCH:
            msg.framing = F_NONE
        elif method == "CONNECT" and 200 <= status < 300:
            msg.framing = F_SWITCH
        if msg.framing != F_SWITCH and req.hold:
            req.hold = False  # no switch after all: held bytes are HTTP/1 again
            other = self.parsers[1 - d]
            if other.state == HOLD:
                other.release()

    def on_end(self, parser: MessageParser, msg: HttpMessage) -> None:
        if msg.is_request:
            if msg.resolved:
                self._try_emit(msg)
            return
        status = msg.status or 0
        if status < 200 and status != 101:
            req = msg.req
            self.ctx.budget.give(msg.budget)
            msg.budget = 0
            if req is not None and not req.emitted:
                if req.interim is None:
                    req.interim = [status]
                elif len(req.interim) < MAX_INTERIM:
                    req.interim.append(status)
            elif len(self.orphan_interim) < MAX_INTERIM:
                self.orphan_interim.append(status)
            return
        req = msg.req
        if msg.framing == F_SWITCH:
            if req is not None:
                req.resp = msg
                req.resolved = True
            self._switch(parser, msg)
        if req is None:
            self._emit(None, msg)
            return
        req.resp = msg
        req.resolved = True
        self._try_emit(req)

    def on_lost(self, parser: MessageParser, flag: str) -> None:
        role = parser.role
        if role == "response":
            if self.pending:
                req = self.pending.popleft()
                if req.placeholder:
                    return  # the lost request's response was lost too: nothing to show
                req.flag(flag)
                self._resolve_missing(req)
            elif self.lost_responses < self.max_pending:
                self.lost_responses += 1
        elif role == "request":
            if self.lost_responses:
                self.lost_responses -= 1  # its response was lost already: nothing to pair or show
                return
            ph = HttpMessage(True, 0, [], 0)
            ph.placeholder = True
            ph.flags.append(flag)
            if len(self.pending) >= self.max_pending:
                old = self.pending.popleft()
                if not old.placeholder:
                    self._resolve_missing(old)
            self.pending.append(ph)

    # ------------------------------------------------------------------ helpers
    def _set_client(self, d: int) -> None:
        self.client_dir = d
        self.parsers[d].role = "request"
        self.parsers[1 - d].role = "response"
        eps = self.ctx.endpoints
        self._src = eps[d]
        self._dst = eps[1 - d]

    def _resolve_missing(self, req: HttpMessage) -> None:
        req.resolved = True
        req.resp = None
        self._try_emit(req)

    def _try_emit(self, req: HttpMessage) -> None:
        if req.complete and req.resolved and not req.emitted:
            self._emit(req, req.resp)

    def _switch(self, parser: MessageParser, resp: HttpMessage) -> None:
        req = resp.req
        if req is not None and req.method == "CONNECT" and resp.status != 101:
            name = "tunnel"
        else:
            name = resp.upgrade or (req.upgrade if req is not None else None) or "unknown"
        resp.upgrade = name
        self.switched_to = name.split(",")[0].strip().lower() or "unknown"
        self.parsers[1 - parser.direction].switch()

    def _emit(self, req: HttpMessage | None, resp: HttpMessage | None) -> None:
        ctx = self.ctx
        flags: list[str] = []
        info: dict[str, Any] = {}
        weird: list[str] | None = None
        skipped = 0
        truncated = False
        budget = 0
        request = response = None
        if req is not None:
            req.emitted = True
            request = Message(
                headers=req.headers,
                trailers=req.trailers,
                body=req.body,
                body_size=req.body_size,
                wire_size=req.wire_size,
                truncated=req.truncated,
            )
            info["http_version"] = req.version
            if req.flags:
                flags.extend(req.flags)
            weird = req.weird
            skipped = req.skipped
            truncated = req.truncated
            budget = req.budget
            req.budget = 0
            if req.interim is not None:
                info["interim"] = req.interim
            if req.ce_applied is not None:
                info["request_content_encoding"] = req.ce_applied
            if req.ce_error is not None:
                info["request_content_encoding_error"] = req.ce_error
        if resp is not None:
            response = Message(
                headers=resp.headers,
                trailers=resp.trailers,
                body=resp.body,
                body_size=resp.body_size,
                wire_size=resp.wire_size,
                truncated=resp.truncated,
            )
            if req is None:
                info["http_version"] = resp.version
                if self.orphan_interim:
                    info["interim"] = self.orphan_interim
                    self.orphan_interim = []
            if resp.flags:
                flags.extend(f for f in resp.flags if f not in flags)
            if resp.weird:
                weird = resp.weird if weird is None else weird + [w for w in resp.weird if w not in weird]
            skipped += resp.skipped
            truncated = truncated or resp.truncated
            budget += resp.budget
            resp.budget = 0
            if resp.ce_applied is not None:
                info["content_encoding"] = resp.ce_applied
            if resp.ce_error is not None:
                info["content_encoding_error"] = resp.ce_error
        call = Call(
            protocol="http",
            src=self._src,
            dst=self._dst,
            transport=ctx.transport,
            flow_id=ctx.flow_id,
            request_ts=None if req is None else req.ts,
            response_ts=None if resp is None else resp.ts,
            method=None if req is None else req.method,
            target=None if req is None else req.target,
            status=None if resp is None else resp.status,
            request=request,
            response=response,
            info=info,
            flags=flags,
        )
        if resp is not None and resp.framing == F_SWITCH:
            info["upgrade"] = resp.upgrade
            call.flag(Flag.UPGRADE)
            self.upgrade_call = call
        if req is None:
            call.flag(Flag.REQUEST_MISSING)
        elif resp is None:
            call.flag(Flag.RESPONSE_MISSING)
        if truncated:
            call.flag(Flag.TRUNCATED)
        if weird:
            info["weird"] = list(weird)
        if skipped:
            info["skipped_bytes"] = skipped
        if budget:
            ctx.budget.give(budget)
        ctx.emit(call)
