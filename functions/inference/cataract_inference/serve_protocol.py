"""uvicorn's HTTP/1.1 protocol for `serve`, with a deadline on each request's head and on reading its answer.

uvicorn times out idle keep-alive connections but not a request's head: a client that connects and
sends nothing, or trickles its headers, holds its connection for ever. Nor does it time out a client
that stops reading: its answers fill the socket's buffers and uvicorn waits for them to drain, for ever.
`serve` caps connections at ``limit_concurrency``, so that many such clients (one script on the network)
locked everyone else out with 503s until they left. The body has its own deadline in the app
(``api.BODY_DEADLINE_S``).
The protocol also answers uvicorn's "too many connections" 503, and its 400 for a request that is not
valid HTTP/1.1, in the API's JSON error shape, not as plain text, so a client reads every error the same way.
It refuses a request that has both Content-Length and Transfer-Encoding, and closes its connection (RFC 9112 6.1).

Used by `serve` only; uvicorn is not in the Lambda image (API Gateway fronts the function there).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import struct
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .schemas import SAFETY_HEADERS_RAW, ErrorResponse

HEADER_DEADLINE_S = 10.0  # a browser sends its headers in one packet; a phone on a poor link, in well under this
# The largest request line and headers taken, however they arrive: h11 alone refused only a head still incomplete past
# 16 KiB (so the same 20 KiB of cookies passed in one packet and failed in several, as "malformed").
MAX_HEAD_BYTES = 64 * 1024
_HEAD_END = re.compile(rb"\n\r?\n")
# A request target in absolute form (what a client sends through a proxy): scheme and authority, then the path.
_ABSOLUTE_FORM = re.compile(rb"(?i)https?://(?:[^/?#@]*@)?(?P<host>[^/?#]*)")
# How long the socket may stay full of our answer with the client reading none of it. A client that reads, however
# slowly, takes some of it each time this comes round, and keeps its connection.
WRITE_DEADLINE_S = 30.0
# How long a connection closed with a request body still arriving keeps reading (and dropping) it. Closing a socket
# with unread bytes sends a reset, and a client that uploads the whole body before reading (Python's urllib and
# http.client) then loses the answer it was sent: the early 413, the 503.
LINGER_S = 5.0
# Once the runner is stopping (Ctrl-C), lingering is cut to this, and ends sooner after LINGER_IDLE_S without data
# (the client has stopped sending): shutdown must not wait the whole linger, or uvicorn's graceful timeout, for it.
SHUTDOWN_LINGER_S = 1.0
LINGER_IDLE_S = 0.5


def _send_queue(sock: Any) -> int:
    """Bytes in a socket's send queue (Linux's SIOCOUTQ); 0 where the OS does not say."""
    try:
        import fcntl  # Unix only: `serve` runs on Windows too, without this measure
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (ImportError, AttributeError, OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def _error_json(code: str, message: str, disclaimer: str) -> bytes:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message}, "disclaimer": disclaimer})
    return json.dumps(body.model_dump(exclude_none=True)).encode()


def _error_headers(body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The headers of every answer the protocol writes itself: JSON, never cached, the app's safety headers, closing."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
        (b"cache-control", b"no-store"),
        *SAFETY_HEADERS_RAW,
        (b"connection", b"close"),
    ]


def _timeout_response(deadline_s: float, disclaimer: str) -> bytes:
    message = f"the request line and headers did not arrive within {deadline_s:g} s"
    payload = _error_json("request_timeout", message, disclaimer)
    head = b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in _error_headers(payload))
    return head + b"\r\n" + payload


class _HeadLimitedConnection(h11.Connection):
    """h11's connection, refusing a head that ends past MAX_HEAD_BYTES before parsing it, however it arrived: in one
    packet or many, first on its connection, pipelined, or behind an answer given before its body was read (uvicorn
    parses on from there without returning). The refusal is a protocol error, answered by send_400_response: a 414
    where the request line alone is over the limit, a 431 otherwise. So is a request with both Content-Length and
    Transfer-Encoding. A request target in absolute form is passed on in origin form."""

    head_too_large = False
    target_too_long = False  # the head too large, and its request line alone
    both_lengths = False  # Content-Length and Transfer-Encoding
    request_method: bytes | None = None  # the last request's, for the answer to one refused after it was parsed

    @property
    def bytes_after_last_request(self) -> bool:
        """Bytes came after a request that said it was the last (HTTP/1.0, Connection: close)."""
        return self.their_state is h11.MUST_CLOSE and bool(self.trailing_data[0])

    def next_event(self) -> Any:
        if self.bytes_after_last_request:
            # Bytes after a request that said it was the last (HTTP/1.0, Connection: close), such as the CRLF old
            # clients append: ignored (RFC 9112 9.6), where h11's error replaced that request's answer with a 400.
            return h11.PAUSED
        if self.their_state is h11.IDLE:
            pending = self.trailing_data[0]
            # Where h11 itself ends a head: a blank line, with or without its CR.
            if len(pending) > MAX_HEAD_BYTES and _HEAD_END.search(pending, 0, MAX_HEAD_BYTES + 3) is None:
                self.head_too_large = True
                # RFC 9112 3: a request-target longer than the server parses is a 414, not a 431.
                self.target_too_long = pending.find(b"\n", 0, MAX_HEAD_BYTES) == -1
                status = 414 if self.target_too_long else 431
                raise h11.RemoteProtocolError("request line and headers too large", error_status_hint=status)
        event = super().next_event()
        if isinstance(event, h11.Request):
            self.request_method = event.method
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                # RFC 9112 6.1: the server must close the connection after answering it; h11 would keep it alive.
                self.both_lengths = True
                raise h11.RemoteProtocolError("Content-Length and Transfer-Encoding", error_status_hint=400)
            if absolute := _ABSOLUTE_FORM.match(event.target):
                event = _in_origin_form(event, absolute)
        return event


def _in_origin_form(request: h11.Request, absolute: re.Match[bytes]) -> h11.Request:
    """RFC 9112 3.2.2: a server must accept a target in absolute form, and take its host for the Host header.
    uvicorn took the whole target for the path (a 404), and the loopback guard judged a Host the target overrode."""
    host = absolute["host"]
    if not host or host.startswith(b":"):
        # RFC 9110 4.2.1: an http(s) URI without a host is invalid; its Host would be empty or a bare port.
        raise h11.RemoteProtocolError("a request target in absolute form names no host", error_status_hint=400)
    rest = request.target[absolute.end() :].partition(b"#")[0]  # a fragment is never the server's
    target = rest if rest.startswith(b"/") else b"/" + rest
    headers = [(name, value) for name, value in request.headers if name != b"host"] + [(b"host", host)]
    return h11.Request(method=request.method, headers=headers, target=target, http_version=request.http_version)


def with_deadlines(
    disclaimer: str,
    deadline_s: float = HEADER_DEADLINE_S,
    write_deadline_s: float = WRITE_DEADLINE_S,
    linger_s: float = LINGER_S,
) -> type[H11Protocol]:
    """An ``H11Protocol`` that cuts off a client whose request head takes longer than ``deadline_s``, or that
    reads none of its answer for ``write_deadline_s`` while the socket's buffers are full.

    The head's clock starts when the connection opens, and again at the first byte of each later request on
    it. A client that sent part of a head gets a JSON 408 before the connection closes; one that sent
    nothing is closed silently (browsers open spare connections they may never use), and so is one
    still trickling the body of a request already answered (an early 413: its answer is out). A client
    that does not read is dropped (its answer cannot reach it anyway). A connection closed while a request's body
    is still arriving first sends its answer and a FIN, then reads and drops the rest for up to ``linger_s`` (once
    the server is stopping, up to SHUTDOWN_LINGER_S, and only while it keeps coming).
    """
    timeout_response = _timeout_response(deadline_s, disclaimer)
    busy_body = _error_json(
        "overloaded", "the local runner has too many open connections or requests; retry shortly", disclaimer
    )
    malformed_body = _error_json(
        "malformed_request", "the request is not valid HTTP/1.1 (its request line or a header is malformed)", disclaimer
    )
    head_too_large_body = _error_json(
        "headers_too_large",
        f"the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB (large cookies for this host?); send less",
        disclaimer,
    )
    target_too_long_body = _error_json(
        "uri_too_long",
        f"the request line is over {MAX_HEAD_BYTES // 1024} KiB; send a shorter URL (a photo goes in the body)",
        disclaimer,
    )
    both_lengths_body = _error_json(
        "malformed_request",
        "the request has both Content-Length and Transfer-Encoding headers; send one of them",
        disclaimer,
    )
    shutting_down_body = _error_json(
        "overloaded", "the local runner is shutting down; retry once it is started again", disclaimer
    )
    busy_headers = _error_headers(busy_body, (b"retry-after", b"1"))

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": busy_headers})
        await send({"type": "http.response.body", "body": busy_body})

    stopping_headers = _error_headers(shutting_down_body, (b"retry-after", b"1"))

    async def answered_if_cancelled(app: Any, scope: Any, receive: Any, send: Any) -> None:
        """``app``, but a request still queued or screening when uvicorn's graceful shutdown runs out (it cancels
        them) gets a JSON 503, not uvicorn's plain-text 500 and an "Exception in ASGI application" log."""
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, sending)
        except asyncio.CancelledError:
            if started:
                raise  # part of an answer is out: uvicorn closes the connection
            await send({"type": "http.response.start", "status": 503, "headers": stopping_headers})
            await send({"type": "http.response.body", "body": shutting_down_body})

    class HeaderDeadlineProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner_app: Any = None
            super().__init__(*args, **kwargs)
            # h11's own limit past ours, so that an oversized head gets the 431, not h11's 400.
            self._head_limited = _HeadLimitedConnection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES + 1024)
            self.conn = self._head_limited
            # uvicorn's own limit check answers in plain text; the same check, made by the app property, in JSON.
            self._limit, self.limit_concurrency = self.limit_concurrency, None
            self._head_timer: asyncio.TimerHandle | None = None
            self._write_timer: asyncio.TimerHandle | None = None
            self._unread = 0  # bytes of answer not yet taken (_unsent) when the write timer was last armed
            self._cycle_when_armed: object = None
            self._lingering = False
            self._peer_done = False  # the client half-closed after whole requests: close once they are answered
            self._stopping = False  # the server is shutting down: lingering is brief
            self._idle_timer: asyncio.TimerHandle | None = None  # while lingering and stopping: the client's silence

        @property
        def app(self) -> Any:
            # Read by handle_events as each head completes, before its task exists: uvicorn's own moment and test.
            limit = self._limit
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
                self.logger.warning("Exceeded concurrency limit: 503.")
                return busy
            return functools.partial(answered_if_cancelled, self._inner_app)

        @app.setter
        def app(self, value: Any) -> None:
            self._inner_app = value

        def _awaiting_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._cycle_when_armed = self.cycle
            self._head_timer = self.loop.call_later(deadline_s, self._head_deadline_passed)

        def _head_pending(self) -> bool:
            """Part of a head waits in h11's buffer, unparsed (it has not parsed one: IDLE)."""
            return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # pause_writing (and so the write deadline) as soon as any answer waits in the transport, not past
            # 64 kB: a client that filled the kernel's buffers and left less there, then was closed (keep-alive,
            # head deadline), held its slot for ever, since close() waits for the buffer to drain.
            transport.set_write_buffer_limits(high=0)
            # uvicorn closes the transport itself (after an answer with "connection: close"); every close goes
            # through _close, which lingers while a body is still arriving.
            self._close_transport = transport.close
            transport.close = self._close  # type: ignore[method-assign]
            self._arm()

        def _close(self) -> None:
            # SEND_BODY: a body still arriving. ERROR or a refused head: its body (if any) may still be arriving.
            # MUST_CLOSE with bytes after the last request: more may wait unread, and a close with unread bytes
            # sends a reset that cuts the answer short.
            refused = (
                self._head_limited.head_too_large
                or self.conn.their_state is h11.ERROR
                or self._head_limited.bytes_after_last_request
            )
            if (
                self._lingering
                or self.transport.is_closing()
                or not (refused or self.conn.their_state is h11.SEND_BODY)
            ):
                self._close_transport()
                return
            self._lingering = True
            self._disarm()
            self.transport.write_eof()  # the answer, then a FIN: the client can read it, and stop sending
            self.loop.call_later(linger_s, self._close_transport)
            if self._stopping:
                self._linger_briefly()
            self.flow.resume_reading()  # uvicorn pauses reading a body the app has not taken

        def _linger_briefly(self) -> None:
            self.loop.call_later(min(SHUTDOWN_LINGER_S, linger_s), self._close_transport)
            self._wait_for_silence()

        def _wait_for_silence(self) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = self.loop.call_later(min(LINGER_IDLE_S, linger_s), self._close_transport)

        def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's protocol returns a bool
            if self._lingering:
                self._close_transport()  # the client has sent everything: no reset now
                return None
            # MUST_CLOSE: a whole last request (Connection: close, or HTTP/1.0), as done as DONE.
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE) and not self.transport.is_closing():
                # A client that half-closes after whole requests (nc -N, batch tools) still reads their answers:
                # the transport stays open for writing until the last one is out (on_response_complete).
                self._peer_done = True
                return True
            return None  # nothing whole to answer (idle, or a head or body cut short): asyncio closes

        def on_response_complete(self) -> None:
            super().on_response_complete()  # starts the next pipelined request, if a whole one is buffered
            if self._peer_done and self.conn.their_state is not h11.DONE and not self.transport.is_closing():
                self.transport.close()  # the client sends nothing more: that was its last answer
            if (
                self._head_timer is None
                and self._awaiting_head()
                and self._head_pending()
                and not self.transport.is_closing()
            ):
                # Part of the next head came in with the last request: its clock starts now, as at a first byte, and
                # not uvicorn's keep-alive timer's, which closed it silently (no 408).
                self._unset_keepalive_if_required()
                self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                if self._stopping:
                    self._wait_for_silence()  # still sending: keep reading (and dropping) the rest a moment
                return  # the rest of a body no one will read
            if self._head_timer is None and self._awaiting_head():
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.cycle is not self._cycle_when_armed:
                self._disarm()  # the head is complete: a new request cycle began

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer to what h11 cannot parse is plain text; the same answer as JSON.
            if self._head_limited.target_too_long:  # its body may follow: the close lingers, as for any refused head
                self._answer_and_close(414, b"URI Too Long", target_too_long_body)
            elif self._head_limited.head_too_large:
                self._answer_and_close(431, b"Request Header Fields Too Large", head_too_large_body)
            elif self._head_limited.both_lengths:
                self._answer_and_close(400, b"Bad Request", both_lengths_body)
            else:
                self._answer_and_close(400, b"Bad Request", malformed_body)

        def _answer_and_close(self, status: int, reason: bytes, body: bytes) -> None:
            """Write a JSON answer with h11, outside any request cycle, and close the connection.

            Only while no answer is under way: after one (a malformed chunk after an early 413), h11 refuses a
            second, and the connection is just closed. The app's task for the request, if it has one, is told the
            client is gone (its receive() returns a disconnect, its answer is dropped): it may not have run yet (a
            malformed body that came with its head), and its answer on the finished connection was a 500.
            """
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                headers = _error_headers(body)
                # The answer to a HEAD is its headers only: h11 refuses a body after them.
                head = self.conn.our_state is h11.SEND_RESPONSE and self._head_limited.request_method == b"HEAD"
                for event in (
                    h11.Response(status_code=status, headers=headers, reason=reason),
                    h11.Data(data=b"" if head else body),
                ):
                    self.transport.write(self.conn.send(event) or b"")
                self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                # Else its first receive() would send the 100 Continue the client asked for, into the closed stream.
                cycle.waiting_for_100_continue = False
                cycle.message_event.set()
            self.transport.close()

        def shutdown(self) -> None:
            self._stopping = True
            if self._lingering:
                self._linger_briefly()
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_started and self.conn.their_state is h11.SEND_BODY:
                # Still receiving a body: the app would wait for it until uvicorn's graceful timeout cancelled it,
                # and uvicorn then answered a plain-text 500. A JSON 503 now, and the app told at once that the
                # client is gone (by _answer_and_close), so there is no task left to cancel.
                self._answer_and_close(503, b"Service Unavailable", shutting_down_body)
                return
            super().shutdown()

        def pause_writing(self) -> None:
            super().pause_writing()  # the socket's buffers are full: uvicorn waits for the client to read
            if self._write_timer is None:
                self._arm_write_timer()

        def _arm_write_timer(self) -> None:
            self._unread = self._unsent()
            self._write_timer = self.loop.call_later(write_deadline_s, self._write_deadline_passed)

        def _unsent(self) -> int:
            """Bytes of answer not yet taken by the client: in the transport, and (where the OS says) in the
            socket's send queue, which can hold megabytes that drain for a while before the transport's do."""
            return self.transport.get_write_buffer_size() + _send_queue(self.transport.get_extra_info("socket"))

        def resume_writing(self) -> None:
            self._stop_write_timer()
            super().resume_writing()

        def _stop_write_timer(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _write_deadline_passed(self) -> None:
            self._write_timer = None
            if self._unsent() < self._unread:
                self._arm_write_timer()  # the client read some since: slow, not gone
                return
            if not self.transport.is_closing():
                self.logger.warning("Client read none of its answer within %g s: connection dropped.", write_deadline_s)
            self.transport.abort()  # close() would wait for the buffer to drain, which is what never happens

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._stop_write_timer()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            super().connection_lost(exc)

        def _head_deadline_passed(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._cycle_when_armed:
                return
            # A 408 only for part of a head: a client that sent nothing, or is still sending the body of a request
            # already answered, is closed silently.
            if self._head_pending():
                self.logger.warning("Request head not complete within %g s: 408, connection closed.", deadline_s)
                self.transport.write(timeout_response)
            self.transport.close()  # connection_lost then tells h11 and uvicorn

    return HeaderDeadlineProtocol
