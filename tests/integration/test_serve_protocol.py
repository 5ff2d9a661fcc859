"""`serve`'s HTTP protocol: a deadline on each request's head, and uvicorn's connection limit answered in JSON.

A real uvicorn server on a loopback port, in a thread, with the protocol under a short deadline and a
small app whose ``/slow`` route outlasts the deadline (a request being answered is never cut off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cataract_inference.host_guard import LoopbackHostGuard
from cataract_inference.observability import SERVICE
from cataract_inference.serve_protocol import MAX_HEAD_BYTES, with_deadlines
from tests.support.serve import free_port

DEADLINE_S = 0.6
WRITE_DEADLINE_S = 1.0
LINGER_S = 0.6
BIG = 2 * 1024 * 1024  # an answer that cannot fit in the sockets' buffers
LIMIT = 4
DISCLAIMER = "Screening aid (test)."


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] in ("/early", "/early-busy"):  # answers before reading the body, as the app's 413 does
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        if scope["path"] == "/early-busy":
            time.sleep(0.3)  # the loop held, as by a busy server: what the client sends next arrives in one read
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(DEADLINE_S * 2.5)
    elif scope["path"] == "/stuck":  # outlasts uvicorn's graceful shutdown, as a queue of 40 MP photos can
        await asyncio.sleep(60)
    host = dict(scope["headers"]).get(b"host", b"").decode()
    payload = json.dumps(
        {"path": scope["path"], "query": scope["query_string"].decode(), "host": host, "body_bytes": len(body)}
    ).encode()
    if scope["path"] in ("/big", "/huge"):
        payload = b" " * (BIG if scope["path"] == "/big" else 4 * BIG)
    elif scope["path"] == "/piece":
        payload = b" " * 8192
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@contextlib.contextmanager
def _running(linger_s: float = LINGER_S, app: Any = _app) -> Iterator[tuple[int, uvicorn.Server, threading.Thread]]:
    chosen = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=chosen,
        http=with_deadlines(DISCLAIMER, deadline_s=DEADLINE_S, write_deadline_s=WRITE_DEADLINE_S, linger_s=linger_s),
        limit_concurrency=LIMIT,
        timeout_keep_alive=30,  # longer than the test: only the head deadline closes connections here
        timeout_graceful_shutdown=3,  # as `serve` has one (5 s): without it a stopping server waits for any body
        log_level="error",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield chosen, server, thread
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def served() -> Iterator[tuple[int, uvicorn.Server]]:
    """The port of a running server, and the server (to look at its connections, or to stop it)."""
    with _running() as (chosen, server, _):
        yield chosen, server


@pytest.fixture
def port(served: tuple[int, uvicorn.Server]) -> int:
    return served[0]


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S * 8)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket times out)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_response(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """The next HTTP response from ``sock.makefile("rb")`` (buffered: pipelined answers can share one read)."""
    status_line = reader.readline().decode("latin-1")
    assert status_line, "closed before a response"
    headers: dict[str, str] = {}
    while (line := reader.readline().decode("latin-1").strip()) != "":
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, reader.read(int(headers["content-length"]))


def _json_error(raw: bytes, status: int) -> dict[str, Any]:
    """The error of a JSON answer with ``status`` in the API's shape, disclaimer included."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"content-type: application/json" in head.lower()
    # The runner's own answers (408, 503, its 400) carry the app's safety headers too.
    assert b"x-content-type-options: nosniff" in head.lower() and b"referrer-policy: no-referrer" in head.lower()
    answer = json.loads(body)
    assert answer["disclaimer"] == DISCLAIMER
    error: dict[str, Any] = answer["error"]
    return error


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


@contextlib.contextmanager
def _server_log() -> Iterator[list[str]]:
    """The lines the server logs meanwhile: uvicorn's (they do not reach the root logger, and so not caplog),
    asyncio's and the app's. Start it once the server runs: uvicorn's Config sets its loggers up afresh."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep = Keep()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "asyncio", SERVICE)]
    for logger in loggers:
        logger.addHandler(keep)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(keep)


def test_a_client_that_sends_nothing_is_closed_silently_after_the_deadline(port: int) -> None:
    with _connect(port) as sock:
        start = time.monotonic()
        assert _read_all(sock) == b""  # closed, with no response to a request never made
        assert DEADLINE_S * 0.8 <= time.monotonic() - start <= DEADLINE_S * 5


def test_a_head_that_trickles_gets_a_json_408_and_the_connection_closes(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\n")
        time.sleep(DEADLINE_S / 2)
        sock.sendall(b"X-Slow: 1\r\n")  # bytes keep coming, but the head is never finished
        error = _json_error(_read_all(sock), 408)
    assert error["code"] == "request_timeout"
    assert f"{DEADLINE_S:g} s" in error["message"]


def test_a_request_being_answered_is_not_cut_off_by_the_head_deadline(port: int) -> None:
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(_get("/slow"))  # the app takes 2.5 deadlines to answer
        status, _, body = _read_response(reader)
        assert status == 200 and json.loads(body)["path"] == "/slow"
        # The connection stays usable: the next request on it is answered too.
        sock.sendall(_get("/again"))
        status, _, body = _read_response(reader)
        assert status == 200 and json.loads(body)["path"] == "/again"


def test_a_body_slower_than_the_head_deadline_is_left_to_the_app(port: int) -> None:
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 6\r\n\r\nabc")
        time.sleep(DEADLINE_S * 2)  # past the head deadline, mid-body
        sock.sendall(b"def")
        status, _, body = _read_response(reader)
    assert status == 200 and json.loads(body) == {"path": "/upload", "query": "", "host": "test", "body_bytes": 6}


def test_the_deadline_applies_again_to_each_later_request_on_a_kept_alive_connection(port: int) -> None:
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(_get("/first"))
        assert _read_response(reader)[0] == 200
        time.sleep(DEADLINE_S * 1.5)  # idle between requests: the keep-alive timeout's business, not ours
        sock.sendall(b"GET /second HTTP/1.1\r\n")  # then a head that never ends
        raw = reader.read()  # to the close
    assert raw.startswith(b"HTTP/1.1 408 ")


def test_a_client_still_sending_an_answered_body_is_closed_with_nothing_more_written(port: int) -> None:
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
        assert _read_response(reader)[0] == 413
        start = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close while a byte is in flight
            while time.monotonic() - start < DEADLINE_S * 5:
                sock.sendall(b"x" * 10)  # the rest of the refused body, slowly
                time.sleep(DEADLINE_S / 4)
        rest = reader.read()  # to the close
        waited = time.monotonic() - start
    assert rest == b"", "no second answer after the 413"
    assert waited < DEADLINE_S * 4, "closed at the deadline, not held open by the trickle"


def test_a_refused_body_sent_in_full_afterwards_gets_no_second_answer(port: int) -> None:
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: test\r\nContent-Length: 30\r\n\r\n")
        assert _read_response(reader)[0] == 413
        sock.sendall(b"x" * 30)  # the rest of the body: h11 is then idle, with nothing buffered
        rest = reader.read()  # to the close, at the deadline
    assert rest == b"", "a 408 for headers that never began was written after the 413"


def test_pipelined_requests_in_one_packet_are_all_answered(port: int) -> None:
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(_get("/one") + _get("/two"))
        answers = [json.loads(_read_response(reader)[2])["path"] for _ in range(2)]
    assert answers == ["/one", "/two"]


def test_part_of_a_head_pipelined_behind_a_whole_request_gets_its_json_408(port: int) -> None:
    # Its bytes came before the first answer, so no later first byte started its clock: uvicorn's keep-alive timer
    # closed it silently instead (5 s under `serve`, before the 10 s head deadline; 30 s here).
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(_get("/one") + b"GET /two HTTP/1.1\r\nHo")
        status, _, body = _read_response(reader)
        start = time.monotonic()
        rest = reader.read()  # to the close
        waited = time.monotonic() - start
    assert status == 200 and json.loads(body)["path"] == "/one"
    assert _json_error(rest, 408)["code"] == "request_timeout"
    assert waited < DEADLINE_S * 3


@pytest.mark.parametrize(
    ("target", "path", "query", "host"),
    [
        ("http://test/health", "/health", "", "test"),
        ("HTTPS://elsewhere:8443/v1/screen?explain=true", "/v1/screen", "explain=true", "elsewhere:8443"),
        ("http://test", "/", "", "test"),
        ("http://test?x=1", "/", "x=1", "test"),
        ("http://user:secret@[::1]:8000/x", "/x", "", "[::1]:8000"),  # userinfo is not the host
        ("http://test/a#fragment/../b", "/a", "", "test"),
        ("/http://other/health", "/http://other/health", "", "test"),  # origin form, whatever follows the slash
    ],
)
def test_a_target_in_absolute_form_reaches_the_app_as_its_path_and_host(
    port: int, target: str, path: str, query: str, host: str
) -> None:
    """What a client sends through a proxy. RFC 9112 says a server must accept it, and take the target's host for
    the Host header (which the loopback guard judges)."""
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(_get(target) + _get("/after"))  # and the connection goes on as usual
        answers = [_read_response(reader) for _ in range(2)]
    assert [status for status, _, _ in answers] == [200, 200]
    first, second = (json.loads(body) for _, _, body in answers)
    assert (first["path"], first["query"], first["host"]) == (path, query, host)
    assert (second["path"], second["host"]) == ("/after", "test")


@pytest.mark.parametrize("target", ["http:///health", "http://:8000/health", "https://user@/x"])
def test_a_target_in_absolute_form_without_a_host_gets_a_json_400(port: int, target: str) -> None:
    """RFC 9110 4.2.1: an http URI with no host is invalid, and the Host it would give is empty or a bare port."""
    with _connect(port) as sock:
        sock.sendall(_get(target))
        error = _json_error(_read_all(sock), 400)
    assert error["code"] == "malformed_request"


def test_an_http_1_0_target_in_absolute_form_gives_its_host(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"GET http://localhost:8000/health HTTP/1.0\r\n\r\n")
        raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["host"] == "localhost:8000"


def test_over_the_connection_limit_the_answer_is_json_503_and_idle_clients_cannot_hold_it(port: int) -> None:
    idle = [_connect(port) for _ in range(LIMIT)]
    try:
        time.sleep(0.1)
        with _connect(port) as sock, sock.makefile("rb") as reader:
            sock.sendall(_get("/health"))
            status, headers, body = _read_response(reader)
        assert status == 503
        assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "overloaded"
        time.sleep(DEADLINE_S * 2)  # the idle clients are cut off at the deadline...
        with _connect(port) as sock, sock.makefile("rb") as reader:
            sock.sendall(_get("/health"))
            assert _read_response(reader)[0] == 200  # ...and the service is back
    finally:
        for sock in idle:
            sock.close()


def test_clients_that_never_read_their_answers_are_dropped_and_cannot_hold_the_limit(port: int) -> None:
    stuck = []
    for _ in range(LIMIT):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(DEADLINE_S * 8)
        sock.connect(("127.0.0.1", port))
        sock.sendall(_get("/big") * 5)  # 10 MB of answers asked for, none read
        stuck.append(sock)
    try:
        time.sleep(WRITE_DEADLINE_S * 3)
        with _connect(port) as sock, sock.makefile("rb") as reader:
            sock.sendall(_get("/health"))
            assert _read_response(reader)[0] == 200  # their slots are free again
        for sock in stuck:
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            assert received < 5 * BIG, "the connection was dropped, not left to deliver every answer"
    finally:
        for sock in stuck:
            sock.close()


def test_a_client_that_reads_its_answer_slowly_keeps_its_connection(port: int) -> None:
    # 8 MB: more than the sockets' buffers hold, so the answer waits in the transport while the client reads it,
    # taking longer than the write deadline in all, but some of it within each.
    with _connect(port) as sock:
        sock.sendall(_get("/huge"))
        received = b""
        while len(received.partition(b"\r\n\r\n")[2]) < 4 * BIG:
            time.sleep(WRITE_DEADLINE_S / 3)
            chunk = sock.recv(1 << 19)
            assert chunk, "dropped while still reading"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")


def _held_connection(server: uvicorn.Server) -> H11Protocol:
    """The one connection the server has open."""
    while not server.server_state.connections:
        time.sleep(0.01)
    [held] = list(server.server_state.connections)
    return held  # type: ignore[return-value]


def _small_window(port: int) -> socket.socket:
    """A connection whose small receive buffer an 8 MB answer overfills, so that it waits in the transport."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(DEADLINE_S * 8)
    sock.connect(("127.0.0.1", port))
    return sock


def test_a_client_that_reads_its_answer_keeps_its_connection_after_the_write_deadline(
    served: tuple[int, uvicorn.Server],
) -> None:
    # The write deadline ran on after the client had read everything, and dropped it when it came round again: a
    # healthy keep-alive session whose writes had once paused was cut off 60 s on under `serve`.
    port, server = served
    with _small_window(port) as sock, sock.makefile("rb") as reader:
        held = _held_connection(server)
        sock.sendall(_get("/huge"))
        start = time.monotonic()
        time.sleep(0.2)
        assert held.transport.get_write_buffer_size() > 0, "the answer did not wait: the deadline never ran"
        status, _, body = _read_response(reader)
        assert status == 200 and len(body) == 4 * BIG
        time.sleep(max(0.0, start + WRITE_DEADLINE_S * 2.5 - time.monotonic()))  # idle, past two deadlines
        sock.sendall(_get("/again"))
        status, _, body = _read_response(reader)
    assert status == 200 and json.loads(body)["path"] == "/again"


def test_a_client_that_reads_some_of_its_answer_then_stops_reading_is_dropped(
    served: tuple[int, uvicorn.Server],
) -> None:
    # A phone that lost its link mid-answer. Having read some within the deadline, it gets another; reading nothing
    # in that one, it is dropped, as a client that never read is.
    port, server = served
    with _small_window(port) as sock:
        held = _held_connection(server)
        sock.sendall(_get("/huge"))
        time.sleep(WRITE_DEADLINE_S / 4)
        assert held.transport.get_write_buffer_size() > 0, "the answer did not wait: the deadline never ran"
        received = 0
        while received < 512 * 1024:
            received += len(sock.recv(65536))
        deadline = time.monotonic() + WRITE_DEADLINE_S * 4
        while held in server.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held not in server.server_state.connections, "the stalled client still holds its connection"


def test_serve_runs_uvicorn_with_this_protocol(monkeypatch: pytest.MonkeyPatch, handler: Any) -> None:
    from cataract_inference import cli

    port = free_port()
    seen: dict[str, Any] = {}

    def serving(server: uvicorn.Server, sockets: Any = None) -> None:
        config = server.config
        names = [sock.getsockname()[:2] for sock in sockets]  # bound by the runner, closed once it returns
        seen.update(app=config.app, http=config.http, limit_concurrency=config.limit_concurrency, bound=names)

    monkeypatch.setattr(uvicorn.Server, "run", serving)
    assert cli._cmd_serve(argparse.Namespace(host="127.0.0.1", port=port, verbose=False)) == 0
    # On loopback, behind the Host check (DNS rebinding); on another address there is no loopback name to require.
    assert isinstance(seen["app"], LoopbackHostGuard) and seen["app"].app is handler.app
    assert cli._cmd_serve(argparse.Namespace(host="0.0.0.0", port=port, verbose=False)) == 0
    assert seen["app"] is handler.app
    protocol = seen["http"]
    assert isinstance(protocol, type) and issubclass(protocol, H11Protocol)
    assert protocol.__name__ == "HeaderDeadlineProtocol"
    assert seen["limit_concurrency"] == 64
    assert seen["bound"] == [("0.0.0.0", port)]


def test_serve_writes_its_metrics_to_stderr_as_the_readme_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], handler: Any
) -> None:
    from cataract_inference import cli, observability

    port = free_port()
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)

    def serving(server: uvicorn.Server, sockets: Any = None) -> None:  # a flush of 100 values under `serve -v`
        observability.record_client_error("invalid_base64")
        observability.metrics.flush_metrics()

    monkeypatch.setattr(uvicorn.Server, "run", serving)
    capsys.readouterr()
    assert cli._cmd_serve(argparse.Namespace(host="127.0.0.1", port=port, verbose=True)) == 0
    out, err = capsys.readouterr()
    assert '"_aws"' not in out and '"ClientError_invalid_base64"' in err


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nContent-Length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: test\r\nX Bad: 1\r\n\r\n",
        b"NOT AN HTTP REQUEST\r\n\r\n",
    ],
)
def test_a_request_that_is_not_http_gets_a_json_400(port: int, request_bytes: bytes) -> None:
    with _connect(port) as sock:
        sock.sendall(request_bytes)
        assert _json_error(_read_all(sock), 400)["code"] == "malformed_request"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /echo HTTP/1.1\r\nHost: test\r\nX-Trace : 1\r\nContent-Length: 2000000\r\n\r\n",  # a bad name
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2000000\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["header-name", "two-lengths"],
)
def test_a_malformed_head_with_a_body_behind_it_gets_its_json_400_not_a_reset(port: int, head: bytes) -> None:
    # http.client and urllib send the whole body before reading: the 400 was written, then the socket closed with
    # the body unread, which resets the connection, and the client saw ConnectionResetError instead of the answer.
    with _connect(port) as sock:
        _upload_behind(sock, head)
        assert _json_error(_read_all(sock), 400)["code"] == "malformed_request"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["te-first", "cl-first"],
)
def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_its_connection_closed(
    port: int, head: bytes
) -> None:
    # RFC 9112 6.1: the server must close the connection after answering such a request (a proxy in front may have
    # framed it the other way: smuggling). h11 took the chunked body and kept the connection, serving what followed.
    with _connect(port) as sock:
        sock.sendall(head + b"0\r\n\r\n" + _get("/smuggled"))
        raw = _read_all(sock)
    error = _json_error(raw, 400)
    assert error["code"] == "malformed_request"
    assert "Content-Length" in error["message"] and "Transfer-Encoding" in error["message"]
    assert b"smuggled" not in raw, "the request behind it was served"


def _upload_behind(sock: socket.socket, head: bytes) -> None:
    """Send ``head``, then, once the server has refused it and closed, nearly 2 MB of body regardless."""
    sock.sendall(head)
    time.sleep(0.1)  # the refusal and the close come first, as they did
    for _ in range(30):
        sock.sendall(b"x" * 65536)


def _head_with_cookie(size: int) -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: test\r\nCookie: " + b"c" * size + b"\r\n\r\n"


def _send_in_pieces(sock: socket.socket, data: bytes, pieces: int) -> None:
    """``data`` in ``pieces`` writes, a moment apart, so that the server reads them apart."""
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        sock.sendall(data[start : start + step])
        time.sleep(0.005)


@pytest.mark.parametrize("pieces", [1, 40], ids=["one-write", "in-pieces"])
def test_a_large_head_is_taken_however_it_arrives(port: int, pieces: int) -> None:
    # 20 KiB of cookies: taken in one write, refused as "malformed" in pieces (h11 limits an incomplete head only).
    head = _head_with_cookie(20 * 1024)
    with _connect(port) as sock, sock.makefile("rb") as reader:
        _send_in_pieces(sock, head, pieces)
        status, _, body = _read_response(reader)
    assert status == 200 and json.loads(body)["path"] == "/health"


@pytest.mark.parametrize("pieces", [1, 40], ids=["one-write", "in-pieces"])
def test_a_head_over_the_limit_gets_a_json_431_however_it_arrives(port: int, pieces: int) -> None:
    head = _head_with_cookie(MAX_HEAD_BYTES)
    with _connect(port) as sock:
        _send_in_pieces(sock, head, pieces)
        error = _json_error(_read_all(sock), 431)
    assert error["code"] == "headers_too_large" and "64 KiB" in error["message"]


@pytest.mark.parametrize("pieces", [1, 40], ids=["one-write", "in-pieces"])
def test_a_request_line_over_the_limit_gets_a_json_414(port: int, pieces: int) -> None:
    # RFC 9112 3: a request-target longer than the server parses gets 414; it got the 431 for large headers
    # ("large cookies for this host?").
    head = b"GET /health?x=" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: test\r\n\r\n"
    with _connect(port) as sock:
        _send_in_pieces(sock, head, pieces)
        error = _json_error(_read_all(sock), 414)
    assert error["code"] == "uri_too_long" and "64 KiB" in error["message"]


def test_a_head_over_the_limit_with_a_body_behind_it_gets_its_431_not_a_reset(port: int) -> None:
    # As for a head h11 refuses: a client that uploads the whole body before reading must still get the answer.
    head = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2000000\r\nCookie: " + b"c" * MAX_HEAD_BYTES
    with _connect(port) as sock:
        _upload_behind(sock, head + b"\r\n\r\n")
        assert _json_error(_read_all(sock), 431)["code"] == "headers_too_large"


def test_a_head_ended_by_bare_newlines_with_a_body_in_the_same_packet_is_not_taken_for_a_large_head(
    port: int,
) -> None:
    # h11 ends a head at a blank line with or without its CR; the limit once looked for CRLF CRLF only.
    body = b"x" * (100 * 1024)
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /echo HTTP/1.1\nHost: test\nContent-Length: %d\n\n" % len(body) + body)
        status, _, answer = _read_response(reader)
    assert status == 200 and json.loads(answer)["body_bytes"] == len(body)


def test_a_pipelined_head_over_the_limit_gets_a_431_when_its_turn_comes(port: int) -> None:
    # It waited in the buffer behind the first request, past the check made as data arrived.
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(_get("/one") + _head_with_cookie(MAX_HEAD_BYTES + 4096))
        first = _read_response(reader)
        rest = reader.read()
    assert first[0] == 200 and json.loads(first[2])["path"] == "/one"
    assert _json_error(rest, 431)["code"] == "headers_too_large"


def test_a_head_over_the_limit_behind_an_early_answer_gets_a_431(port: int) -> None:
    # After an answer given before its body was read, uvicorn parses on through the rest of that read without coming
    # back: a head over the limit there was served (and one over h11's own limit called malformed).
    early = b"POST /early-busy HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n"
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(early)
        time.sleep(0.1)  # the app has answered and holds the loop
        sock.sendall(b"0123456789" + _head_with_cookie(MAX_HEAD_BYTES + 4096))
        assert _read_response(reader)[0] == 413
        rest = reader.read()
    assert _json_error(rest, 431)["code"] == "headers_too_large"


def test_a_client_that_left_less_than_64_kb_of_its_answer_unread_is_dropped(
    served: tuple[int, uvicorn.Server],
) -> None:
    # asyncio calls pause_writing only past 64 kB in the transport. A client that filled the kernel's buffers and
    # left less there, then was closed (the head deadline here, keep-alive under `serve`), held its slot for ever:
    # close() waits for the buffer to drain, and no write deadline had started.
    port, server = served
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    try:
        while not server.server_state.connections:
            time.sleep(0.01)
        [held] = list(server.server_state.connections)
        for _ in range(2000):  # 8 kB answers, one at a time and none read, until one waits in the transport
            sock.sendall(_get("/piece"))
            time.sleep(0.005)
            if held.transport.get_write_buffer_size() > 0:
                break
        assert 0 < held.transport.get_write_buffer_size() < 64 * 1024
        deadline = time.monotonic() + DEADLINE_S + WRITE_DEADLINE_S * 4
        while held in server.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held not in server.server_state.connections, "the unread connection still holds its slot"
    finally:
        sock.close()


def test_a_body_still_arriving_when_the_runner_stops_gets_a_json_503(served: tuple[int, uvicorn.Server]) -> None:
    # The app waited for the body until uvicorn's graceful timeout cancelled it, then uvicorn answered a
    # plain-text 500.
    port, server = served
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\nabc")
        time.sleep(0.2)
        server.should_exit = True
        start = time.monotonic()
        error = _json_error(_read_all(sock), 503)
    assert error["code"] == "overloaded" and "shutting down" in error["message"]
    assert time.monotonic() - start < 2, "answered at once, not after the graceful timeout"


def test_a_malformed_chunk_after_an_early_answer_closes_quietly(port: int, caplog: pytest.LogCaptureFixture) -> None:
    # The JSON 400 was written regardless, and h11 refused a second answer: asyncio logged a fatal error and a
    # traceback from data_received, and aborted the connection.
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert _read_response(reader)[0] == 413
        sock.sendall(b"zz\r\nnot a chunk\r\n")
        assert reader.read() == b""  # to the close, nothing more written
    time.sleep(0.1)
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()], caplog.text


@pytest.mark.parametrize(
    "request_bytes",
    [
        # The app answers 404 without reading the body: it answered into the connection the 400 had finished.
        b"POST /nowhere HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # The 400 itself had a body, which h11 refuses after the head of an answer to HEAD.
        b"HEAD /health HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # The app, reading the body, first sent the 100 Continue asked for: into the finished connection.
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nExpect: 100-continue\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["post", "head", "expect-100-continue"],
)
def test_a_malformed_body_that_comes_with_its_head_gets_one_json_400_and_no_server_error(
    handler: Any, monkeypatch: pytest.MonkeyPatch, request_bytes: bytes
) -> None:
    # The real app: its late answer raised LocalProtocolError, logged as "unhandled error" and counted as a
    # ServerError, for what is the client's error.
    from cataract_inference import api

    server_errors: list[None] = []
    monkeypatch.setattr(api, "record_server_error", lambda: server_errors.append(None))
    with _running(app=handler.app) as (port, _, _), _server_log() as lines, _connect(port) as sock:
        sock.sendall(request_bytes)
        raw = _read_all(sock)
        time.sleep(0.2)  # the app's task runs after the 400
    if request_bytes.startswith(b"HEAD"):
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
        assert rest == b"", "a body, or a second answer"
    else:  # the JSON body, and nothing after it
        assert _json_error(raw, 400)["code"] == "malformed_request"
    for sign in ("unhandled error", "Exception in ASGI application", "Fatal error"):
        assert not [line for line in lines if sign in line], lines
    assert not server_errors


@pytest.mark.parametrize("busy", [False, True])
def test_a_client_that_sends_its_whole_body_before_reading_gets_the_early_answer(port: int, busy: bool) -> None:
    # As Python's urllib and http.client do. The connection was closed with the body unread: a reset, which
    # cost the client the 413 (or the 503 over the connection limit) waiting for it.
    idle = [_connect(port) for _ in range(LIMIT if busy else 0)]
    try:
        time.sleep(0.1)
        body = b"x" * (64 * 1024 * 1024)  # more than the kernel buffers on both sides hold (tcp_rmem: 32 MB)
        with _connect(port) as sock, sock.makefile("rb") as reader:
            head = f"POST /early HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            status = _read_response(reader)[0]
        assert status == (503 if busy else 413)
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_stopped_mid_upload_does_not_hold_the_runner_stopping() -> None:
    # Its answer (the JSON 503) was closed through the lingering close, and uvicorn waited for the linger time.
    with _running(linger_s=30) as (port, server, thread), _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\nabc")  # then silence
        time.sleep(0.2)
        server.should_exit = True
        start = time.monotonic()
        thread.join(10)
        # Not cut short by uvicorn's graceful timeout (3 s here, 5 s under `serve`): stopped at once.
        assert time.monotonic() - start < 2, "the runner waited on a client that stopped sending"
        assert _json_error(_read_all(sock), 503)["code"] == "overloaded"


def test_a_client_still_uploading_when_the_runner_stops_gets_its_json_503() -> None:
    # Closed at once on shutdown, with its body unread, the connection was reset: a client that sends the whole
    # body before reading (urllib, http.client) lost the 503 in a broken pipe.
    chunk, chunks = b"x" * 65536, 20
    with _running(linger_s=30) as (port, server, _), _connect(port) as sock:
        sock.sendall(f"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {len(chunk) * chunks}\r\n\r\n".encode())
        for index in range(chunks):
            if index == 3:
                server.should_exit = True  # mid-upload; the client goes on sending, then reads
            sock.sendall(chunk)
            time.sleep(0.02)
        assert _json_error(_read_all(sock), 503)["code"] == "overloaded"


def test_a_request_still_being_served_when_graceful_shutdown_runs_out_gets_a_json_503() -> None:
    # uvicorn cancels it and answered a plain-text 500, logging "Exception in ASGI application" (to uvicorn's own
    # logger, which caplog never sees: hence _server_log).
    with _running() as (port, server, thread), _server_log() as log, _connect(port) as sock:
        sock.sendall(b"POST /stuck HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi")
        time.sleep(0.2)
        server.should_exit = True
        error = _json_error(_read_all(sock), 503)
        thread.join(10)
    assert error["code"] == "overloaded" and "shutting down" in error["message"]
    assert not [line for line in log if "Exception in ASGI application" in line], log


def test_an_uploader_that_pauses_still_gets_its_early_answer() -> None:
    # Lingering once ended after 0.5 s of silence: a client that sends the whole body before reading, pausing once
    # (a retransmission on a poor link), lost the 413 in a broken pipe.
    with _running(linger_s=5) as (port, _, _), _connect(port) as sock, sock.makefile("rb") as reader:
        body = b"x" * (64 * 1024 * 1024)
        sock.sendall(
            f"POST /early HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        sock.sendall(body[: len(body) // 2])
        time.sleep(1.0)  # a pause well within the 5 s linger, longer than the 0.5 s that once ended it
        sock.sendall(body[len(body) // 2 :])
        assert _read_response(reader)[0] == 413


@pytest.mark.parametrize(
    "requests",
    [
        [b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc"],
        [  # pipelined, the slow one first: the others wait in the buffer behind it
            b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc",
            _get("/one"),
            b"POST /two HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi",
        ],
        # Its last request says it is the last: h11 puts the client in MUST_CLOSE, not DONE, and the answer was lost.
        [b"POST /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"],
        [b"POST /slow HTTP/1.0\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc"],
    ],
    ids=["one", "pipelined", "connection-close", "http-1.0"],
)
def test_a_client_that_half_closes_after_whole_requests_gets_every_answer_then_a_close(
    port: int, requests: list[bytes]
) -> None:
    # `printf ... | nc -N` and batch clients shut their side once the requests are out. asyncio closed the
    # connection at that EOF, and the answers of requests still being served went nowhere.
    with _connect(port) as sock:
        sock.sendall(b"".join(requests))
        sock.shutdown(socket.SHUT_WR)
        reader = sock.makefile("rb")
        answers = [_read_response(reader) for _ in requests]
        assert reader.read() == b"", "the connection closes after the last answer"
    assert [status for status, _, _ in answers] == [200] * len(requests)
    paths = [json.loads(body)["path"] for _, _, body in answers]
    assert paths == [r.split(b" ")[1].decode() for r in requests]


@pytest.mark.parametrize(
    ("request_bytes", "more"),
    [
        (b"POST /slow HTTP/1.0\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc", b"\r\n"),
        (b"POST /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc", _get("/one")),
    ],
    ids=["http-1.0-then-crlf", "connection-close-then-a-request"],
)
def test_bytes_after_a_last_request_are_ignored_not_answered_in_its_place(
    port: int, request_bytes: bytes, more: bytes
) -> None:
    # h11 raised on them, and the 400 for "data after the last request" took the place of that request's answer.
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(request_bytes)
        time.sleep(0.05)  # while it is being answered
        sock.sendall(more)
        status, _, body = _read_response(reader)
        assert status == 200 and json.loads(body)["path"] == "/slow"
        assert reader.read() == b"", "the connection closes after the answer, the request after it unanswered"


def test_a_large_answer_to_a_last_request_with_more_bytes_behind_it_arrives_whole_then_a_clean_close(port: int) -> None:
    # Reading paused at the extra bytes: those that came later stayed unread, and closing on them sent a reset that
    # cut the 2 MB answer short (ConnectionResetError after a few KB).
    with _connect(port) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\nGET /one HTTP/1.1\r\n")
        time.sleep(0.2)
        sock.sendall(b"Host: test\r\n\r\n")  # the rest of a request that will not be answered
        time.sleep(0.5)  # the answer is complete on the server's side, and the close under way
        head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) == BIG


def test_a_client_that_half_closes_mid_body_is_closed_not_waited_for(port: int) -> None:
    # The body can never be whole: nothing to answer, and no reason to hold the connection.
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert time.monotonic() - started < DEADLINE_S
