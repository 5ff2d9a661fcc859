"""The app under ``serve`` (plain ASGI, no Lambda event): clients that stall, leave, or arrive all at once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cataract_inference import api
from cataract_inference.drawing import draw_eye, encode

Message = dict[str, Any]


@pytest.fixture
def classifier(tiny_model_dir: Path) -> Any:
    from cataract_inference.classifier import load_classifier

    return load_classifier(tiny_model_dir)


@pytest.fixture
def app(classifier: Any, tiny_model_dir: Path) -> Any:
    from cataract_inference.settings import Settings

    return api.create_app(classifier, replace(Settings.from_env({}), model_dir=tiny_model_dir))


async def call(
    app: Any,
    receive: Callable[[], Awaitable[Message]],
    content_type: str = "image/jpeg",
    *,
    raw_path: bytes = b"/predict",
    query: bytes = b"",
    more_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Message:
    """One POST as uvicorn would pass it (``raw_path`` percent-decoded into ``path`` as uvicorn does: invalid
    UTF-8 becomes U+FFFD); the response's status, headers and JSON body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": urllib.parse.unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode()), *more_headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": dict(start["headers"]), "body": json.loads(body)}


def whole(body: bytes) -> Callable[[], Awaitable[Message]]:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def test_a_body_that_stalls_is_refused_with_408(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "BODY_DEADLINE_S", 0.2)
    parts = iter([{"type": "http.request", "body": b"\xff\xd8\xff", "more_body": True}])

    async def receive() -> Message:
        try:
            return next(parts)
        except StopIteration:
            await asyncio.sleep(3600)  # the client never sends the rest
            raise AssertionError("unreachable") from None

    started = time.monotonic()
    answer = asyncio.run(call(app, receive))
    assert answer["status"] == 408 and answer["body"]["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 5


def test_a_client_that_leaves_mid_body_is_not_a_server_error(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []
    monkeypatch.setattr(api, "record_server_error", lambda: counted.append("server"))
    monkeypatch.setattr(api, "record_client_error", counted.append)
    parts: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"\xff\xd8", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(parts)

    answer = asyncio.run(call(app, receive))
    assert answer["status"] == 499 and answer["body"]["error"]["code"] == "client_closed_request"
    assert counted == ["client_closed_request"]


def test_serve_screens_a_few_photos_at_a_time(app: Any, classifier: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette's pool would run 40 at once; each may decode a 40 MP photo. Extra requests wait, and all succeed."""
    slots = api.SERVE_CONCURRENT_PREDICTIONS
    running, peak, lock = [0], [0], threading.Lock()
    original = classifier.predict_bytes

    def slow_predict(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.05)
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(classifier, "predict_bytes", slow_predict)
    photo = encode(draw_eye("cataract", size=(96, 64)))

    async def many() -> list[Message]:
        return await asyncio.gather(*(call(app, whole(photo)) for _ in range(4 * slots)))

    answers = asyncio.run(many())
    assert [a["status"] for a in answers] == [200] * (4 * slots)
    assert peak[0] == slots, f"{peak[0]} predictions ran at once; the cap is {slots}"


@pytest.mark.parametrize(
    ("raw_path", "query"),
    [(b"/predict", b"explain=%ff"), (b"/%ff", b""), (b"/predict%C3", b""), (b"/predict", b"explain=%C3%28")],
)
def test_a_path_or_query_that_is_not_utf8_is_invalid_encoding_as_on_lambda(
    app: Any, raw_path: bytes, query: bytes
) -> None:
    """uvicorn turns %ff into U+FFFD and routing went on (a 404 or a 422); the handler refuses it: so does serve."""
    answer = asyncio.run(call(app, whole(encode(draw_eye("normal"), "JPEG")), raw_path=raw_path, query=query))
    assert answer["status"] == 400 and answer["body"]["error"]["code"] == "invalid_encoding"
    assert answer["body"]["request_id"] and answer["body"]["disclaimer"]
    assert answer["headers"][b"x-content-type-options"] == b"nosniff"
    assert answer["headers"][b"referrer-policy"] == b"no-referrer"


def test_percent_encoded_utf8_in_the_query_is_not_refused(app: Any) -> None:
    answer = asyncio.run(call(app, whole(encode(draw_eye("normal"), "JPEG")), query=b"explain=%66alse"))
    assert answer["status"] == 200, answer
    # Decoded, then refused as what it is, an unknown parameter (422), not as bad encoding (400).
    answer = asyncio.run(call(app, whole(encode(draw_eye("normal"), "JPEG")), query=b"explain=false&not%C3%A9=1"))
    assert answer["status"] == 422 and "'noté'" in answer["body"]["error"]["message"], answer


@pytest.mark.parametrize(
    ("content_type", "more_headers", "says"),
    [
        # uvicorn passes a repeated header on twice (API Gateway joins the two with a comma): not the first one.
        ("application/json", ((b"content-type", b"text/plain"),), "more than one Content-Type"),
        ("application/json", ((b"content-encoding", b"identity"), (b"content-encoding", b"gzip")), "'gzip'"),
        ("application/json", ((b"content-encoding", b"identity, gzip"),), "'gzip'"),
    ],
    ids=["two-content-types", "identity-then-gzip", "identity-comma-gzip"],
)
def test_a_repeated_header_is_read_whole_not_by_its_first_value(
    app: Any, content_type: str, more_headers: tuple[tuple[bytes, bytes], ...], says: str
) -> None:
    body = json.dumps({"image": "aGk="}).encode()
    answer = asyncio.run(call(app, whole(body), content_type, more_headers=more_headers))
    assert answer["status"] == 415 and answer["body"]["error"]["code"] == "unsupported_media_type"
    assert says in answer["body"]["error"]["message"]
