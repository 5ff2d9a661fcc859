"""Fuzzing the real Lambda handler: whatever arrives, the answer is JSON with 200 or 4xx, never a 5xx or an exception.

2,550 examples in all (random bytes up to 4 KB, some behind a real image signature; truncated and
corrupted PNG/JPEG/WebP/GIF/BMP/TIFF, huge declared dimensions, wrong JSON types, deep nesting, unicode
and lone surrogates, odd event shapes). Each call into the handler is bounded: hypothesis' deadline fails
a slow example, and a hard bound fails a hang (which the deadline, checked only once an example returns,
never would). The tiny model keeps it fast; decoding does not depend on it.
"""

from __future__ import annotations

import base64
import faulthandler
import io
import json
import signal
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from cataract_inference import events
from cataract_inference.drawing import draw_eye
from tests.conftest import FakeLambdaContext, load_handler
from tests.support.images import png_with_declared_size
from tests.support.onnx_models import build_tiny_model

pytestmark = pytest.mark.slow

FUZZ = settings(
    deadline=2000,  # ms per example: a slow example is a failure (a hang or a decompression bomb)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples in CI every run; new seeds are a local exploration
    database=None,
    # No shrinking: each shrink step re-runs a slow example, so a 5 s one took over 5 minutes to report.
    # The failing example is reported as drawn, and derandomize makes it the same on every run.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)

HARD_BOUND_S = 10.0  # per call into the handler; a SIGALRM fails a hang in Python code or a blocking wait
KILL_AFTER_S = 30.0  # a hang in C code never gets back to run that handler: faulthandler dumps the stacks, exits


class HandlerHangError(AssertionError):
    """The handler ran past the hard bound on one example."""


_terminal_fd = 2  # set below to stderr as pytest found it: fd 2 is captured, and what it holds is lost at exit


@pytest.fixture(scope="module", autouse=True)
def _uncaptured_stderr(pytestconfig: pytest.Config) -> None:
    global _terminal_fd  # noqa: PLW0603 - hypothesis' examples cannot take a function-scoped fixture
    try:  # pytest's faulthandler keeps an uncaptured copy of stderr under a private key, which may move
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:
        _terminal_fd = 2  # captured: a dump still ends the run, its stacks may not show
        return
    _terminal_fd = pytestconfig.stash.get(fault_handler_stderr_fd_key, 2)


@contextmanager
def hard_bound(kind: str, seconds: float = HARD_BOUND_S) -> Iterator[None]:
    """Fail the example if the block runs past ``seconds``; the timer and the old SIGALRM handler are restored."""
    message = f"{kind}: the handler ran past the {seconds:g} s hard bound (a hang?)"
    fired: list[bool] = []

    def expire(signum: int, frame: FrameType | None) -> None:
        fired.append(True)
        raise HandlerHangError(message)

    previous = signal.signal(signal.SIGALRM, expire)  # the main thread only, where pytest runs the tests
    faulthandler.dump_traceback_later(KILL_AFTER_S, exit=True, file=_terminal_fd)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
        finally:  # even if the alarm fires between the block's end and the cancel
            signal.signal(signal.SIGALRM, previous)
    if fired:  # raised inside the handler, the error was caught there (Mangum answers any exception with a 500)
        raise HandlerHangError(message)


def call(handler: Any, event: dict[str, Any], kind: str) -> dict[str, Any]:
    """One call into the real handler, under the hard bound."""
    with hard_bound(kind):
        response: dict[str, Any] = handler.lambda_handler(event, FakeLambdaContext())
    return response


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real handler module on a tiny model, loaded once for the whole module."""
    model_dir = build_tiny_model(tmp_path_factory.mktemp("fuzz-model"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "CRITICAL")
        monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        yield load_handler(model_dir, monkeypatch)


def check(handler: Any, event: dict[str, Any], kind: str, *, predict: bool = True) -> int:
    """Invoke; assert the response is a JSON 200 or a JSON 4xx error with a code. Returns the status."""
    return check_response(call(handler, event, kind), predict=predict)


def check_response(response: dict[str, Any], *, predict: bool = True) -> int:
    """Assert ``response`` is a JSON 200 or a JSON 4xx error with a code, both with the disclaimer."""
    status = response["statusCode"]
    assert status == 200 or 400 <= status < 500, (status, response.get("body", "")[:500])
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    payload = json.loads(body)
    if status == 200:
        assert not predict or payload["label"] in ("cataract", "normal", "ungradable"), payload
    else:
        error = payload.get("error") if isinstance(payload, dict) else None
        assert isinstance(error, dict) and isinstance(error.get("code"), str) and error.get("message"), (
            status,
            payload,
        )
    assert "not a diagnosis" in payload["disclaimer"].lower(), payload  # every answer, errors too
    return status


def _seed(fmt: str) -> bytes:
    img = draw_eye("cataract", size=(72, 48), seed=3)
    buffer = io.BytesIO()
    params: dict[str, Any] = {"JPEG": {"quality": 80}, "WEBP": {"quality": 60}}.get(fmt, {})
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


SEEDS = {fmt: _seed(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")}


def _send(data: bytes, as_json: bool, media: str = "image/jpeg") -> dict[str, Any]:
    if as_json:
        return events.predict_event(data)
    return events.predict_event(data, raw=True, media_type=media)


# 1. random bytes, as a raw body and as base64 in JSON -----------------------------------------------


# What each format we read starts with: random bytes behind one get past the file-type check into a decoder.
SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # the first chunk's header too: random dimensions and flags
    b"\xff\xd8\xff\xe0",  # JPEG: JFIF
    b"\xff\xd8\xff\xdb",  # JPEG: straight to a quantisation table
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"RIFF\x00\x10\x00\x00WEBPVP8X",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
)


def sized_binary(low: int, high: int) -> st.SearchStrategy[bytes]:
    """Bytes of a length drawn from low..high: plain ``st.binary`` keeps almost every example under 30 bytes."""
    return st.integers(low, high).flatmap(lambda n: st.binary(min_size=n, max_size=n))


random_bytes = st.one_of(
    st.binary(max_size=64),
    sized_binary(64, 4096),
    st.tuples(st.sampled_from(SIGNATURES), sized_binary(0, 4096)).map(b"".join),
)


@settings(FUZZ, max_examples=450)
@given(data=random_bytes, as_json=st.booleans())
def test_random_bytes(handler: Any, data: bytes, as_json: bool) -> None:
    status = check(handler, _send(data, as_json), f"random bytes ({len(data)} B, {data[:12]!r}...)")
    assert status != 200 or _starts_as_an_image(data), "random bytes are screened only when they happen to be an image"


def _starts_as_an_image(data: bytes) -> bool:
    """Whether ``data`` starts with the magic number of a format the service reads."""
    starts = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")
    return data.startswith(starts) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


# 2. truncated and corrupted images --------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.just(0)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.integers(0, 255)),
    st.tuples(st.just("zero"), st.floats(0.0, 1.0), st.integers(1, 64)),
    st.tuples(st.just("dup"), st.floats(0.0, 1.0), st.integers(1, 64)),
)


def mutate(data: bytes, ops: list[tuple[str, float, int]]) -> bytes:
    """Apply truncations, byte flips, zeroed runs and duplicated runs at relative positions."""
    buf = bytearray(data)
    for op, where, arg in ops:
        if not buf:
            break
        i = min(len(buf) - 1, int(where * len(buf)))
        if op == "truncate":
            del buf[i:]
        elif op == "flip":
            buf[i] ^= arg or 0xFF
        elif op == "zero":
            buf[i : i + arg] = bytes(len(buf[i : i + arg]))
        else:
            buf[i:i] = buf[i : i + arg]
    return bytes(buf)


@settings(FUZZ, max_examples=700)
@given(fmt=st.sampled_from(sorted(SEEDS)), ops=st.lists(mutation, min_size=1, max_size=6), as_json=st.booleans())
def test_truncated_and_corrupted_images(
    handler: Any, fmt: str, ops: list[tuple[str, float, int]], as_json: bool
) -> None:
    check(handler, _send(mutate(SEEDS[fmt], ops), as_json, media=f"image/{fmt.lower()}"), f"corrupted {fmt}")


# 2b. corrupted EXIF on an intact image: the pixels decode, the metadata is hostile ----------------------


def _exif_block() -> bytes:
    """A big-endian EXIF block: orientation 6 and a Make string, the tags a phone writes."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Phone"
    return exif.tobytes()


EXIF = _exif_block()


@settings(FUZZ, max_examples=300)
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "WEBP"]),
    exif=st.one_of(
        st.lists(mutation, min_size=1, max_size=4).map(lambda ops: mutate(EXIF, ops)),
        st.binary(max_size=64).map(lambda tail: b"Exif\x00\x00" + tail),
    ),
)
def test_corrupted_exif(handler: Any, fmt: str, exif: bytes) -> None:
    img = draw_eye("normal", size=(72, 48), seed=5)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, exif=exif)
    status = check(handler, _send(buffer.getvalue(), as_json=False, media=f"image/{fmt.lower()}"), f"{fmt}, bad EXIF")
    assert status == 200, "the pixels are intact: a broken EXIF block is no reason to refuse the photo"


# 3. huge declared dimensions (decompression bombs and lies) -----------------------------------------


def declared(fmt: str, width: int, height: int) -> bytes:
    """A small file of ``fmt`` whose header claims ``width`` x ``height``."""
    if fmt == "PNG":
        return png_with_declared_size(width, height)
    data = bytearray(SEEDS[fmt])
    w16, h16 = width & 0xFFFF, height & 0xFFFF
    if fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
            at = data.find(marker)
            if at >= 0:
                data[at + 5 : at + 9] = struct.pack(">HH", h16, w16)
                break
    elif fmt == "GIF":
        data[6:10] = struct.pack("<HH", w16, h16)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, height & 0x7FFFFFFF)
    elif fmt == "WEBP":
        # An extended (VP8X) header with a 24-bit canvas size, then the original bitstream chunk.
        vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + ((width - 1) & 0xFFFFFF).to_bytes(3, "little")
        vp8x += ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
        body = b"WEBP" + vp8x + bytes(data[12:])
        return b"RIFF" + struct.pack("<I", len(body)) + body
    elif fmt == "TIFF":
        img = Image.new("L", (1, 1))
        buffer = io.BytesIO()
        img.save(buffer, format="TIFF", tiffinfo={256: width & 0xFFFF or 1, 257: height & 0xFFFF or 1})
        return buffer.getvalue()
    return bytes(data)


@settings(FUZZ, max_examples=300)
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]),
    width=st.one_of(st.integers(0, 70_000), st.integers(0, 2**31 - 1)),
    height=st.one_of(st.integers(0, 70_000), st.integers(0, 2**31 - 1)),
)
def test_huge_declared_dimensions(handler: Any, fmt: str, width: int, height: int) -> None:
    event = _send(declared(fmt, width, height), as_json=False, media=f"image/{fmt.lower()}")
    status = check(handler, event, f"{fmt} declaring {width}x{height}")
    if width * height > 40_000_000 and fmt == "PNG":
        assert status == 413, "a decompression bomb is refused before it is decoded"


# 4. wrong JSON types, unicode, deep nesting ---------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(FUZZ, max_examples=300)
@given(
    body=st.one_of(
        json_value,
        st.fixed_dictionaries({"image": json_value}),
        st.fixed_dictionaries({"image": st.text(max_size=200), "explain": json_value}),
        st.fixed_dictionaries({"image": st.text(alphabet="ABCDEFabcdef0123456789+/=-_ \n\u00e9\u2028", max_size=300)}),
        st.dictionaries(st.text(max_size=10), json_value, max_size=5),
    ),
    ensure_ascii=st.booleans(),
)
def test_wrong_json_types_and_unicode(handler: Any, body: Any, ensure_ascii: bool) -> None:
    text = json.dumps(body, ensure_ascii=ensure_ascii)
    check(handler, events.rest_event("/predict", "POST", body=text, content_type="application/json"), "odd JSON")


@settings(FUZZ, max_examples=100)
@given(
    depth=st.one_of(st.integers(1, 2_000), st.integers(2_000, 200_000)),
    opener=st.sampled_from(["[", '{"a":', '{"image":[']),
    closed=st.booleans(),
)
def test_deep_nesting(handler: Any, depth: int, opener: str, closed: bool) -> None:
    closer = {"[": "]", '{"a":': "}", '{"image":[': "]}"}[opener]
    text = opener * depth + "1" + (closer * depth if closed else "")
    event = events.rest_event("/predict", "POST", body=text, content_type="application/json")
    check(handler, event, f"JSON nested {depth} deep")


# 5. the event itself: content types, base64 flags, methods, paths, lone surrogates ------------------

content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "image/png",
            "image/jpeg",
            "application/octet-stream",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
            "APPLICATION/JSON",
        ]
    ),
    st.text(max_size=30),
)


@settings(FUZZ, max_examples=400)
@given(
    body=st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))),
    content_type=content_types,
    is_base64=st.booleans(),
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(["/predict", "/health", "/model", "/", "/docs", "/redoc"]),
        st.text(max_size=20).map("/".__add__),
    ),
    http_api=st.booleans(),
    surrogate=st.booleans(),
)
def test_odd_events(  # noqa: PLR0917 - hypothesis passes each strategy as an argument
    handler: Any,
    body: str | None,
    content_type: str,
    is_base64: bool,
    method: str,
    path: str,
    http_api: bool,
    surrogate: bool,
) -> None:
    if surrogate and body is not None:
        body = body + "\udcff"  # what a Lambda proxy may hand over for invalid UTF-8
    build = events.http_api_event if http_api else events.rest_event
    event = build(path, method, body=body, content_type=content_type or None, is_base64=is_base64)
    response = call(handler, event, f"{method} {path!r} event")
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    page = method == "GET" and path in ("/", "/docs", "/redoc")
    if not headers.get("content-type", "").startswith("text/html"):
        # A page is refused only for a body that cannot be read: otherwise a JSON 404 for /docs would pass here.
        assert not page or is_base64 or surrogate, (path, response["statusCode"], str(response.get("body"))[:200])
        check_response(response, predict=path == "/predict")
        return
    # HTML only for the pages (the form, Swagger UI, ReDoc), found: a miss or a wrong method is a JSON error.
    assert response["statusCode"] == 200 and method == "GET" and path in ("/", "/docs", "/redoc"), response
    body = base64.b64decode(response["body"]).decode() if response.get("isBase64Encoded") else response["body"]
    assert body.lower().startswith("<!doctype html>") and body.rstrip().endswith("</html>"), (path, body[:200])


def test_the_hard_bound_fails_a_hang_and_puts_everything_back() -> None:
    """The guard each example runs under: a wait past the bound fails, naming the input; nothing stays armed."""
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(HandlerHangError, match="a stuck input"), hard_bound("a stuck input", seconds=0.2):
        threading.Event().wait(timeout=20)  # bounded only so that a broken guard fails here instead of hanging
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before
    with hard_bound("a quick input"):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before


def test_the_fuzz_budget_is_at_least_2000_examples() -> None:
    """Guard the issue's floor: the strategies above must total 2,000 examples or more."""
    tests = [
        test_random_bytes,
        test_truncated_and_corrupted_images,
        test_corrupted_exif,
        test_huge_declared_dimensions,
        test_wrong_json_types_and_unicode,
        test_deep_nesting,
        test_odd_events,
    ]
    total = sum(t._hypothesis_internal_use_settings.max_examples for t in tests)  # type: ignore[attr-defined]
    assert total >= 2000, total


@pytest.mark.parametrize("body", ["é", "abc", "a", "ab$=", "\udcff"])
def test_regression_a_flagged_base64_body_that_is_not_base64_is_a_400(handler: Any, body: str) -> None:
    """Found by the fuzzer: Mangum's own base64 decode raised out of the handler (a 502 at the gateway)."""
    event = events.rest_event("/predict", "POST", body=body, content_type="image/jpeg", is_base64=True)
    response = call(handler, event, "flagged base64 body")
    assert response["statusCode"] == 400
    payload = json.loads(response["body"])
    assert payload["error"]["code"] == "invalid_base64"
    assert "not a diagnosis" in payload["disclaimer"].lower()
    assert response["headers"]["x-request-id"] == event["requestContext"]["requestId"]
