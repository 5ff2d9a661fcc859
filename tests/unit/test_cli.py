"""The local runner: make-event, invoke, predict, draw-eye, and a clear exit on a missing model."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cataract_inference import cli, observability
from cataract_inference.classifier import Classifier
from cataract_inference.drawing import draw_eye, encode
from tests.conftest import REPO
from tests.support.serve import free_port

README = REPO / "README.md"


@pytest.fixture(autouse=True)
def _runner_settings_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cli.main`` quiets Powertools in ``os.environ`` for the handler it imports; undone after each test, or a
    later module's handler (a verbose ``serve``, the metrics tests) starts quiet too."""
    for key in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_METRICS_DISABLED"):
        # Recorded either way: delenv of an unset variable records nothing to undo, so it is set first.
        was = os.environ.get(key)
        monkeypatch.setenv(key, was or "")
        if was is None:
            monkeypatch.delenv(key)


@pytest.fixture
def model_env(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cataract_inference import settings

    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    settings.get_settings.cache_clear()
    sys.modules.pop("cataract_inference.handler", None)


def test_make_event_then_invoke(model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "eye.png"
    draw_eye("cataract").save(image)
    event_path = tmp_path / "event.json"
    assert cli.main(["make-event", str(image), "-o", str(event_path)]) == 0
    event = json.loads(event_path.read_text())
    assert event["httpMethod"] == "POST" and event["headers"]["Content-Type"] == "application/json"
    capsys.readouterr()
    assert cli.main(["invoke", str(event_path)]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["statusCode"] == 200
    assert response["body"]["label"] in ("cataract", "normal", "ungradable")


@pytest.mark.parametrize(
    "flags",
    [
        ["--http-api"],
        ["--raw"],
        ["--explain"],
        ["--raw", "--explain"],
        ["--http-api", "--explain"],
        ["--http-api", "--raw", "--explain"],
    ],
)
def test_make_event_variants_replay(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    image = tmp_path / "eye.jpg"
    draw_eye("normal").save(image)
    assert cli.main(["make-event", str(image), "-o", str(tmp_path / "e.json"), *flags]) == 0
    capsys.readouterr()
    # Each flag shapes the event: an ignored one still replayed, as the other kind of event.
    event = json.loads((tmp_path / "e.json").read_text(encoding="utf-8"))
    assert (event.get("version") == "2.0") == ("--http-api" in flags)
    headers = {k.lower(): v for k, v in event["headers"].items()}
    assert (headers["content-type"] == "image/jpeg" and event["isBase64Encoded"]) == ("--raw" in flags)
    assert cli.main(["invoke", str(tmp_path / "e.json"), "--body"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert "probabilities" in body
    assert ("heatmap_png" in body) == ("--explain" in flags)


def test_predict_prints_one_result_per_image(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for kind in ("normal", "cataract"):
        paths.append(tmp_path / f"{kind}.png")
        draw_eye(kind).save(paths[-1])
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code = cli.main(["predict", "--compact", *map(str, paths), str(bad)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["status"] for line in lines] == [200, 200, 415]
    assert lines[2]["error"]["code"] == "not_an_image"
    assert code == 2


def test_invoke_output_is_only_the_response(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cataract_inference import events

    path = tmp_path / "health.json"
    path.write_text(json.dumps(events.rest_event("/health")))
    cli.main(["-v", "invoke", str(path)])
    out = capsys.readouterr().out
    assert json.loads(out)["statusCode"] == 200, "logs and metrics go to stderr, like sam local invoke"


def test_missing_model_exits_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from cataract_inference import events, settings

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "nowhere"))
    settings.get_settings.cache_clear()
    sys.modules.pop("cataract_inference.handler", None)
    path = tmp_path / "health.json"
    path.write_text(json.dumps(events.rest_event("/health")))
    assert cli.main(["invoke", str(path)]) == 3
    assert "no model at" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{}", "not an API Gateway proxy event"),
        (b"[]", "not an API Gateway proxy event"),
        (b'{"Records": [{"s3": {}}]}', "not an API Gateway proxy event"),
        (b'{"httpMethod": ', "Expecting value"),
        (b"\xff\xfe not utf-8", "is not JSON"),
        (b'{"requestContext": {}, "httpMethod": "GET"}', "path must be a string"),
        (b'{"requestContext": {}, "version": "2.0"}', "requestContext.http needs method and path"),
        (
            b'{"requestContext": {}, "httpMethod": "POST", "path": "/predict", "resource": "/predict", '
            b'"body": {"image": "x"}}',
            "body must be",
        ),
        (
            b'{"requestContext": {}, "httpMethod": "GET", "path": "/", "resource": "/", "headers": ["a"]}',
            "headers must be",
        ),
        # Each of these once passed the check and failed inside Mangum, as a traceback.
        (
            b'{"requestContext": {}, "httpMethod": "GET", "path": "/", "resource": "/", "headers": {"Host": ["x"]}}',
            "to a string",
        ),
        (
            b'{"requestContext": {}, "httpMethod": "GET", "path": "/", "resource": "/", "headers": {"Host": null}}',
            "to a string",
        ),
        (
            b'{"requestContext": {}, "httpMethod": "GET", "path": "/", "resource": "/", '
            b'"multiValueHeaders": {"Host": [1]}}',
            "strings",
        ),
        (b'{"requestContext": {}, "httpMethod": "GET", "path": "/"}', "resource must be a string"),
        (
            b'{"requestContext": {"identity": null}, "httpMethod": "GET", "path": "/", "resource": "/"}',
            "identity must be an object",
        ),
        (
            b'{"requestContext": {"http": {"method": "GET", "path": "/"}}, "version": "2.0", "rawPath": "/", '
            b'"rawQueryString": 5}',
            "rawQueryString must be a string",
        ),
        (
            b'{"requestContext": {"http": {"method": "GET", "path": "/"}}, "version": "2.0", "rawPath": "/", '
            b'"rawQueryString": null}',
            "rawQueryString must be a string",
        ),
        (
            b'{"requestContext": {"http": {"method": "GET", "path": "/", "sourceIp": "127.0.0.1"}}, "version": "2.0", '
            b'"rawPath": "/", "cookies": [1]}',
            "cookies must be a list of strings",
        ),
        (
            b'{"requestContext": {"http": {"method": "GET", "path": "/"}}, "version": "2.0", "rawPath": "/"}',
            "needs a sourceIp string",
        ),
        (
            b'{"requestContext": {"http": {"method": "GET", "path": "/", "sourceIp": "127.0.0.1"}}, "version": "2.0", '
            b'"rawPath": "/", "headers": null}',
            "headers must be an object",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=[
        "empty",
        "list",
        "s3-event",
        "truncated",
        "not-utf8",
        "v1-no-path",
        "v2-no-http",
        "body-object",
        "headers",
        "header-list",
        "header-null",
        "multi-header-int",
        "v1-no-resource",
        "v1-identity-null",
        "v2-query-int",
        "v2-query-null",
        "v2-cookie-int",
        "v2-no-source-ip",
        "v2-headers-null",
        "deep",
    ],
)
def test_invoke_refuses_a_file_that_is_not_an_event_with_a_message(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "event.json"
    path.write_bytes(content)
    assert cli.main(["invoke", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and str(path) in err


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_invoke_reads_an_event_saved_with_a_bom_or_as_utf16(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str
) -> None:
    from cataract_inference import events

    path = tmp_path / "health.json"
    path.write_text(json.dumps(events.rest_event("/health")), encoding=encoding)  # Notepad, PowerShell 5's `>`
    assert cli.main(["invoke", str(path), "--body"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


def _recording_heads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes the runner asks of its files, recorded as it reads them."""
    sizes: list[int] = []
    real_head = cli._head

    def head(name: str, size: int) -> bytes:
        sizes.append(size)
        return real_head(name, size)

    monkeypatch.setattr(cli, "_head", head)
    return sizes


def test_invoke_and_make_event_refuse_a_huge_file_without_reading_it_whole(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "READ_LIMIT", 1000)
    big = tmp_path / "video.mp4"
    big.write_bytes(b"\0" * 5000)
    heads = _recording_heads(monkeypatch)
    for argv in (["invoke", str(big)], ["make-event", str(big), "-o", str(tmp_path / "e.json")]):
        assert cli.main(argv) == 2
        assert "is over 1,000 bytes" in capsys.readouterr().err
    assert heads == [1001, 1001] and not (tmp_path / "e.json").exists()


def test_predict_reads_one_byte_past_the_body_limit_and_gets_the_handlers_413(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cataract_inference import settings

    monkeypatch.setenv("MAX_BODY_BYTES", "4096")
    settings.get_settings.cache_clear()
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff" * 1_000_000)
    heads = _recording_heads(monkeypatch)
    assert cli.main(["predict", "--compact", str(big)]) == 2
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["status"] == 413 and line["error"]["code"] == "payload_too_large"
    assert heads == [4097]


def test_ctrl_c_ends_the_runner_with_one_line_and_130(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(event: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "invoke_event", interrupted)
    photo = tmp_path / "eye.png"
    draw_eye("normal").save(photo)
    assert cli.main(["predict", str(photo)]) == 130
    err = capsys.readouterr().err
    assert err == "cataract-screen: interrupted\n"


def _interrupting(how: str) -> Any:
    """A stand-in for the model's predict step that is interrupted as Ctrl-C interrupts it."""

    def predict_bytes(self: Classifier, data: bytes, *, explain: bool = False) -> Any:
        if how == "raise":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)  # delivered before kill returns; Python raises it at its next check
        for _ in range(100):
            time.sleep(0.01)
        raise AssertionError("SIGINT did not interrupt the model")

    return predict_bytes


@pytest.mark.parametrize("how", ["raise", "sigint"])
@pytest.mark.parametrize("command", ["predict", "invoke"])
def test_ctrl_c_while_the_model_runs_ends_the_runner_with_one_line_and_130(
    model_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    command: str,
    how: str,
) -> None:
    """Mangum answers a KeyboardInterrupt raised in the app with a plain-text 500: the runner must not report it."""
    photo = tmp_path / "eye.png"
    photo.write_bytes(encode(draw_eye("normal", size=(96, 64))))
    cli.main(["make-event", str(photo), "-o", str(tmp_path / "e.json")])
    capsys.readouterr()
    predict_bytes = Classifier.predict_bytes
    monkeypatch.setattr(Classifier, "predict_bytes", _interrupting(how))
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background (make, a CI runner) may
    # inherit SIGINT ignored, and the signal would then not interrupt anything.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = ["predict", str(photo), str(photo)] if command == "predict" else ["invoke", str(tmp_path / "e.json")]
    try:
        assert cli.main(argv) == 130
    finally:
        signal.signal(signal.SIGINT, before)
    captured = capsys.readouterr()
    assert captured.err == "cataract-screen: interrupted\n" and captured.out == ""
    # The next screening is not mistaken for an interrupted one.
    monkeypatch.setattr(Classifier, "predict_bytes", predict_bytes)
    assert cli.main(argv) == 0


def test_an_error_in_the_app_is_still_the_handlers_500(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Classifier, data: bytes, *, explain: bool = False) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Classifier, "predict_bytes", broken)
    photo = tmp_path / "eye.png"
    photo.write_bytes(encode(draw_eye("normal", size=(96, 64))))
    assert cli.main(["predict", "--compact", str(photo)]) == 2
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["status"] == 500 and line["error"]["code"] == "internal_error"


def test_predict_reports_a_body_that_is_not_json_with_its_status(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_500 = {"statusCode": 500, "headers": {"content-type": "text/plain"}, "body": "Internal Server Error"}
    monkeypatch.setattr(cli, "invoke_event", lambda event: plain_500)
    photo = tmp_path / "eye.png"
    photo.write_bytes(b"\x89PNG")
    assert cli.main(["predict", "--compact", str(photo)]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "file": str(photo),
        "status": 500,
        "error": {
            "code": "unexpected_response",
            "message": "the handler answered 500 with a body that is not a JSON object: 'Internal Server Error'",
        },
    }
    assert captured.err == ""


def test_predict_reports_an_empty_file_or_standard_input_as_nothing_to_screen(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.jpg"
    empty.touch()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert cli.main(["predict", "--compact", str(empty), "-"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"file": str(empty), "error": {"code": "empty", "message": f"{empty} is empty (0 bytes): nothing to screen"}},
        {"file": "-", "error": {"code": "empty", "message": "standard input is empty (0 bytes): nothing to screen"}},
    ]


def test_predict_refuses_standard_input_named_twice(
    model_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.BytesIO(encode(draw_eye("normal", size=(96, 64))))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
    assert cli.main(["predict", "-", "-"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and stdin.tell() == 0, "refused before anything is read or screened"
    said = "- (standard input) is named more than once; it can be read only once: name it once"
    assert captured.err == f"cataract-screen: {said}\n"


@pytest.mark.parametrize("argv", [["invoke", "-"], ["predict", "-"], ["make-event", "-"]])
def test_a_closed_standard_input_is_a_usage_error(
    model_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", None)  # what Python gives a process started with `<&-`
    assert cli.main(argv) == 2
    said = "cataract-screen: - means standard input, which is closed here; name a file, or pipe one in\n"
    assert capsys.readouterr().err == said


def test_make_event_to_standard_output_with_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make-event PHOTO -o - | cataract-screen invoke -`: `-` is standard output, as it is standard input."""
    photo = tmp_path / "eye.png"
    photo.write_bytes(encode(draw_eye("normal", size=(96, 64))))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["make-event", str(photo), "-o", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["httpMethod"] == "POST" and captured.err == ""
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("POWERTOOLS_METRICS_DISABLED", "maybe", "invalid truth value 'maybe'"),
        ("POWERTOOLS_LOG_LEVEL", "verbose", "Unknown level: 'VERBOSE'"),
        ("LOG_LEVEL", "verbose", "Unknown level: 'VERBOSE'"),  # Powertools reads it too
        ("POWERTOOLS_LOGGER_SAMPLE_RATE", "abc", "Expected a float value ranging 0 to 1"),  # not a ValueError
        ("POWERTOOLS_TRACER_CAPTURE_ERROR", "maybe", "invalid truth value 'maybe'"),  # read by the decorators
    ],
)
def test_a_powertools_variable_it_cannot_read_means_cannot_start(
    tiny_model_dir: Path, variable: str, value: str, said: str
) -> None:
    """Powertools raises a bare ValueError naming no variable, at import: not a usage error (2) but exit 3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_") and "LOG_LEVEL" not in k}
    env.update(MODEL_DIR=str(tiny_model_dir), **{variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "cataract_inference.cli", "-v", "invoke", str(REPO / "events" / "rest-health.json")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    # -v (LOG_LEVEL counts only then: quiet, the runner sets POWERTOOLS_LOG_LEVEL) may log the model's loading first.
    *before, last = result.stderr.splitlines()
    assert last.startswith("cataract-screen: cannot start: a Powertools setting was refused: " + said), last
    assert f"{variable}={value!r}" in last and all(line.startswith('{"level":"INFO"') for line in before), before
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("POWERTOOLS_SERVICE_NAME", "", "POWERTOOLS_SERVICE_NAME is set but blank"),
        ("POWERTOOLS_METRICS_NAMESPACE", " ", "POWERTOOLS_METRICS_NAMESPACE is set but blank"),
        # Not UTF-8 in the environment (as os.fsencode writes the lone surrogate): every answer was a 500.
        ("DISCLAIMER", "D\udce9pistage", "DISCLAIMER is not valid UTF-8"),
    ],
)
def test_a_setting_that_would_break_every_answer_means_cannot_start(
    tiny_model_dir: Path, variable: str, value: str, said: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_") and k != "DISCLAIMER"}
    env.update(MODEL_DIR=str(tiny_model_dir), **{variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "cataract_inference.cli", "invoke", str(REPO / "events" / "rest-health.json")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"cataract-screen: cannot start: {said}"), result.stderr
    assert result.stdout == ""


def test_only_an_error_raised_by_powertools_is_called_a_powertools_setting() -> None:
    from aws_lambda_powertools.shared.functions import strtobool

    def raised(call: Any) -> BaseException:
        with pytest.raises(Exception) as info:
            call()
        return info.value

    assert observability._raised_by_powertools(raised(lambda: strtobool("maybe")))
    # Through the standard library, as Powertools' logger refuses a level: still Powertools' refusal.
    from aws_lambda_powertools import Logger

    assert observability._raised_by_powertools(raised(lambda: Logger(service="t", level="VERBOSE")))
    assert not observability._raised_by_powertools(raised(lambda: int("x")))  # our own code's error stays what it is
    assert not observability._raised_by_powertools(raised(lambda: json.loads("{")))
    # Without a venv, site-packages lies inside the standard library's folder: Powertools' frames still count.
    import sysconfig

    import aws_lambda_powertools

    site = Path(aws_lambda_powertools.__file__).resolve().parents[1]
    paths = {**sysconfig.get_paths(), "stdlib": str(site.parent)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sysconfig, "get_paths", lambda *a, **k: paths)
        assert site.name == "site-packages" and observability._raised_by_powertools(raised(lambda: strtobool("maybe")))
        assert not observability._raised_by_powertools(raised(lambda: int("x")))


def test_output_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    photo = tmp_path / "eye.png"
    photo.write_bytes(encode(draw_eye("normal", size=(96, 64))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_") and k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "wb") as full:  # every write fails: no space left on device
        result = subprocess.run(
            [sys.executable, "-m", "cataract_inference.cli", "make-event", str(photo)],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert (result.returncode, result.stderr) == (
        2,
        "cataract-screen: cannot write the output: No space left on device\n",
    )


def test_standard_output_closed_is_no_crash(tmp_path: Path) -> None:
    """Started with `>&-` (as some service wrappers do), Python's sys.stdout is None: nothing to write or flush."""
    out = tmp_path / "eye.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    result = subprocess.run(
        [sys.executable, "-m", "cataract_inference.cli", "draw-eye", "normal", "-o", str(out)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        preexec_fn=lambda: os.close(1),  # the child's stdout, closed before it starts
    )
    assert (result.returncode, result.stderr) == (0, f"wrote {out}: a drawing, not a photo\n")
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["predict", "{photo}"], True),
        (["make-event", "{photo}"], True),
        (["make-event", "{photo}", "-o", "{out}"], False),  # its results go to the file
    ],
    ids=["predict", "make-event-to-stdout", "make-event-to-a-file"],
)
def test_results_meant_for_a_closed_standard_output_are_not_lost_in_silence(
    tmp_path: Path, argv: list[str], refused: bool
) -> None:
    photo, out = tmp_path / "eye.png", tmp_path / "event.json"
    draw_eye("normal").save(photo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    result = subprocess.run(
        [sys.executable, "-m", "cataract_inference.cli", *(a.format(photo=photo, out=out) for a in argv)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        preexec_fn=lambda: os.close(1),
    )
    if refused:
        assert (result.returncode, result.stderr) == (
            2,
            "cataract-screen: standard output is closed, so the results would be lost: redirect it\n",
        )
    else:
        assert result.returncode == 0 and json.loads(out.read_text())["httpMethod"] == "POST", result.stderr


@pytest.mark.parametrize("wrapped", [False, True], ids=["while-importing", "wrapped-by-an-extension-module"])
def test_ctrl_c_while_the_handler_imports_is_130_in_one_line(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    """An interrupt during an import could surface as a traceback, or as onnxruntime's "ImportError:
    initialization failed" raised from it (exit 1, which means a 5xx answer)."""

    def importing() -> object:
        if not wrapped:
            raise KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(cli, "_handler", importing)
    photo = tmp_path / "eye.png"
    draw_eye("normal").save(photo)
    assert cli.main(["predict", str(photo)]) == 130
    assert capsys.readouterr().err == "cataract-screen: interrupted\n"


def test_make_event_labels_the_bytes_by_what_they_are_and_refuses_an_empty_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gif, empty, text = tmp_path / "eye.jpg", tmp_path / "empty.png", tmp_path / "notes.png"
    draw_eye("normal").save(gif, format="GIF")  # named .jpg: the bytes decide
    empty.write_bytes(b"")
    text.write_text("not a photo")
    assert cli.main(["make-event", str(gif), "--raw", "-o", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["headers"]["Content-Type"] == "image/gif"
    capsys.readouterr()
    assert cli.main(["make-event", str(empty), "-o", str(tmp_path / "e2.json")]) == 2
    assert "is empty (0 bytes)" in capsys.readouterr().err and not (tmp_path / "e2.json").exists()
    assert cli.main(["make-event", str(text), "--raw", "-o", str(tmp_path / "e3.json")]) == 0
    assert "does not start as an image the service reads" in capsys.readouterr().err
    assert json.loads((tmp_path / "e3.json").read_text())["headers"]["Content-Type"] == "application/octet-stream"


def test_ctrl_c_with_the_reader_gone_too_is_still_130_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C in a terminal ends the whole pipeline (`predict … | head`): output still buffered must not turn the
    interrupt into Python's exit-time "Exception ignored ... Broken pipe" and status 120."""
    script = (
        "import sys\n"
        "from cataract_inference import cli\n"
        "def interrupted(args):\n"
        "    print('a result, still in the buffer')\n"
        "    raise KeyboardInterrupt\n"
        "cli._cmd_draw_eye = interrupted\n"
        f"raise SystemExit(cli.main(['draw-eye', 'normal', '-o', {str(tmp_path / 'eye.png')!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_") and k != "PYTHONUNBUFFERED"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, stdout=write_end, stderr=subprocess.PIPE, check=False
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr.decode()) == (130, "cataract-screen: interrupted\n")


@pytest.mark.parametrize("command", ["make-event-small", "make-event-large", "predict"])
def test_a_reader_that_stops_reading_ends_the_runner_quietly_with_141(
    tiny_model_dir: Path, tmp_path: Path, command: str
) -> None:
    """`cataract-screen predict … | head`: no "Broken pipe" error, at a write or at the flush on exit."""
    photo = tmp_path / "eye.png"
    # Small, the event waits in stdout's buffer until the flush at exit; large, a write itself fails.
    sizes = {"make-event-small": 100, "make-event-large": 100_000}
    # make-event: a PNG signature, so that no note about the bytes goes to stderr; their size is what counts here.
    png = b"\x89PNG\r\n\x1a\n"
    photo.write_bytes(png + os.urandom(sizes[command]) if command in sizes else encode(draw_eye("normal", (96, 64))))
    argv = ["predict", str(photo), str(photo)] if command == "predict" else ["make-event", str(photo)]
    # Buffered, as a terminal's shell starts it: PYTHONUNBUFFERED would make every write fail at once.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_") and k != "PYTHONUNBUFFERED"}
    env["MODEL_DIR"] = str(tiny_model_dir)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first byte: EPIPE every time, no race
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cataract_inference.cli", *argv],
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr.decode()) == (141, "")


def test_invoke_reads_standard_input(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cataract_inference import events

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(events.rest_event("/health")).encode())))
    assert cli.main(["invoke", "-", "--body"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


def test_predict_screens_every_file_and_reports_the_unreadable_ones(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "eye.png"
    photo.write_bytes(encode(draw_eye("cataract", size=(96, 64))))
    missing = tmp_path / "missing.jpg"
    assert cli.main(["predict", "--compact", str(photo), str(missing), str(photo)]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(photo), str(missing), str(photo)]
    assert lines[0]["status"] == lines[2]["status"] == 200
    assert lines[1]["error"]["code"] == "unreadable" and "No such file" in lines[1]["error"]["message"]


def test_make_event_warns_when_lambda_would_refuse_the_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(5_000_000))  # 6.7 MB as base64
    assert cli.main(["make-event", str(big), "--raw", "-o", str(tmp_path / "e.json")]) == 0
    assert "over Lambda's 6,291,456-byte invocation limit" in capsys.readouterr().err
    small = tmp_path / "small.jpg"
    small.write_bytes(os.urandom(1000))
    assert cli.main(["make-event", str(small), "-o", str(tmp_path / "s.json")]) == 0
    assert "limit" not in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_serve_refuses_a_port_that_is_not_one(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--port", port])
    assert exit_info.value.code == 2 and "is not a port (1-65535)" in capsys.readouterr().err


def test_draw_eye(tmp_path: Path) -> None:
    out = tmp_path / "eye.png"
    assert cli.main(["draw-eye", "cataract", "-o", str(out), "--seed", "3"]) == 0
    assert out.stat().st_size > 1000


def test_draw_eye_writes_every_extension_it_accepts(tmp_path: Path) -> None:
    from PIL import Image

    for suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        out = tmp_path / f"eye{suffix.upper()}"
        assert cli.main(["draw-eye", "normal", "-o", str(out)]) == 0
        with Image.open(out) as image:
            assert image.size == (480, 320)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["-o", "eye"], "argument -o/--output: 'eye' needs an image extension, which sets the format: one of .png"),
        (["-o", "eye.pdf"], "argument -o/--output: 'eye.pdf' needs an image extension"),
        (["-o", "eye.png", "--seed", "-1"], "argument --seed: '-1' is not a seed: use a whole number, 0 or more"),
        (["-o", "eye.png", "--seed", "x"], "argument --seed: 'x' is not a seed"),
    ],
    ids=["no-extension", "pdf", "negative-seed", "seed-not-a-number"],
)
def test_draw_eye_refuses_a_bad_option_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["draw-eye", "normal", *flags])
    assert exit_info.value.code == 2 and said in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing is drawn"


def test_the_readmes_drawn_eye_example_reads_as_it_says(
    bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Most drawn normal eyes read as cataract: the README's example draws one that does not, and says why."""
    from cataract_inference import settings

    local = README.read_text().split("<!-- SECTION:local -->")[1].split("<!-- /SECTION:local -->")[0]
    assert "A drawn eye is not an eye photo" in local
    (draw,) = [line for line in local.splitlines() if line.startswith(".venv/bin/cataract-screen draw-eye normal")]
    (predict,) = [line for line in local.splitlines() if line.startswith(".venv/bin/cataract-screen predict")]
    monkeypatch.setenv("MODEL_DIR", str(bundled_model_dir))
    settings.get_settings.cache_clear()
    monkeypatch.delitem(sys.modules, "cataract_inference.handler", raising=False)
    monkeypatch.chdir(tmp_path)  # the example writes to /tmp/eye.png: here, eye.png

    def argv(line: str) -> list[str]:
        return [w.replace("/tmp/eye.png", "eye.png") for w in shlex.split(line.split("#", maxsplit=1)[0])[1:]]

    assert cli.main(argv(draw)) == 0
    capsys.readouterr()
    assert cli.main([*argv(predict), "--compact"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "normal" and '"label": "normal"' in predict


def _recording_server(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """uvicorn's server, stubbed: it records its config, its sockets and what the runner had said when it started."""
    import uvicorn

    seen: dict[str, Any] = {}

    def run(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        seen.update(config=server.config, sockets=sockets, said=capsys.readouterr().err)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


def test_serve_prints_no_access_log(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn's access log would print client addresses and whole query strings."""
    seen = _recording_server(monkeypatch, capsys)
    assert cli.main(["-v", "serve", "--port", str(free_port())]) == 0
    assert seen["config"].access_log is False and seen["config"].log_level == "info"


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("::1", False), ("0.0.0.0", True)])
def test_serve_says_where_it_listens_and_bounds_its_clients(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], host: str, warned: bool
) -> None:
    seen = _recording_server(monkeypatch, capsys)
    port = free_port()
    assert cli.main(["serve", "--host", host, "--port", str(port)]) == 0
    err = seen["said"] + capsys.readouterr().err
    shown = f"[{host}]" if ":" in host else host
    assert f"serving on http://{shown}:{port}/" in err
    assert ("no API key" in err) == warned
    # A client that stalls cannot hold Ctrl-C, and a crowd gets 503s instead of piling up uploads.
    assert seen["config"].timeout_graceful_shutdown == 5 and seen["config"].limit_concurrency == 64


def test_serve_says_it_serves_only_once_it_listens(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    port = free_port()
    said: list[str] = []

    def run(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        said.append(capsys.readouterr().err)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # refused, were nothing listening yet

    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert cli.main(["serve", "--port", str(port)]) == 0
    assert said == [f"cataract-screen: serving on http://127.0.0.1:{port}/ (Ctrl-C to stop)\n"]


def test_serve_refuses_connections_until_the_model_is_loaded(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The port is taken early (a clash fails at once) but listened on only once the model is loaded: a client
    that came during a slow load (a model from S3) would otherwise wait on a server that cannot answer."""
    import uvicorn

    port = free_port()
    loaded = cli._handler

    def loading() -> Any:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return loaded()

    monkeypatch.setattr(cli, "_handler", loading)
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: socket.create_connection(("127.0.0.1", port), 5).close()
    )
    assert cli.main(["serve", "--port", str(port)]) == 0


def test_serve_binds_every_address_a_host_name_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """`localhost` is ::1 and 127.0.0.1 in many hosts files: a client trying ::1 only must find the server too."""
    port = free_port()
    real = socket.getaddrinfo

    def both(host: str, *args: Any, **kwargs: Any) -> Any:
        assert host == "localhost"
        return real("::1", *args, **kwargs) + real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", both)
    socks = cli._bind("localhost", port)
    try:
        assert sorted((s.family, s.getsockname()[:2]) for s in socks) == sorted(
            [(socket.AF_INET6, ("::1", port)), (socket.AF_INET, ("127.0.0.1", port))]
        )
        (v6,) = [s for s in socks if s.family == socket.AF_INET6]
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1  # beside 127.0.0.1, not over it
    finally:
        for s in socks:
            s.close()


def test_connections_accepted_on_the_runners_sockets_send_without_delay() -> None:
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) on the connections it accepts only when the listening socket
    names its protocol as TCP: on the runner's own sockets it did not, and each keep-alive answer then waited on
    the client's delayed ACK (serve's throughput fell from 184 to 68 requests/s)."""
    import asyncio

    async def accepted_nodelay() -> int:
        (sock,) = cli._bind("127.0.0.1", free_port())
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Note(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                conn = transport.get_extra_info("socket")
                seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Note, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(seen, 5)
            finally:
                writer.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_serve_on_every_address_takes_ipv4_clients_too() -> None:
    """`--host ::` is every address, IPv4 ones included, as uvicorn serves it: IPv4 clients were refused."""
    port = free_port()
    (sock,) = cli._bind("::", port)
    with sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        sock.listen(1)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_serve_that_loses_the_port_while_its_model_loads_exits_4(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two `serve`s started together both bind (neither listens yet); the one listening second failed after its
    # model loaded with "Address already in use" and exit 2, the usage-error code.
    import uvicorn

    port = free_port()
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("127.0.0.1", port))
    loaded = cli._handler

    def the_other_listens_first() -> Any:
        other.listen(1)
        return loaded()

    monkeypatch.setattr(cli, "_handler", the_other_listens_first)
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("uvicorn started on a port in use"))
    with other:
        assert cli.main(["serve", "--port", str(port)]) == 4
    err = capsys.readouterr().err
    assert err == (
        f"cataract-screen: cannot listen on 127.0.0.1:{port}: port {port} is in use (another server, or a `serve` "
        "still running); stop it or choose --port\n"
    )


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_4(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("uvicorn started on a port in use"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"cataract-screen: cannot listen on 127.0.0.1:{port}: port {port} is in use")
    assert err.count("\n") == 1 and "serving on" not in err


@pytest.mark.parametrize(("flags", "cold_start_metric"), [([], False), (["-v"], True)], ids=["quiet", "verbose"])
def test_the_runner_prints_metrics_only_when_asked(
    tiny_model_dir: Path, flags: list[str], cold_start_metric: bool
) -> None:
    """Quiet, the demo's stderr is free of EMF lines and warnings; verbose shows what Lambda would log."""
    import subprocess

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    env["MODEL_DIR"] = str(tiny_model_dir)
    result = subprocess.run(
        [sys.executable, "-m", "cataract_inference.cli", *flags, "invoke", str(REPO / "events" / "rest-health.json")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["body"]["status"] == "ok"
    assert ('"ColdStart"' in result.stderr) == cold_start_metric, result.stderr
    assert "UserWarning" not in result.stderr


@pytest.mark.parametrize("command", ["predict", "serve", "invoke"])
def test_help_says_how_to_choose_the_model(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "MODEL_DIR" in capsys.readouterr().out.replace("\n", " ")


def test_the_readme_states_the_deadlines_and_limits_serve_runs_with(
    model_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error table and the runner's row promise these numbers: a change to one must change the README too."""
    from cataract_inference.api import BODY_DEADLINE_S
    from cataract_inference.serve_protocol import HEADER_DEADLINE_S, MAX_HEAD_BYTES, WRITE_DEADLINE_S

    seen = _recording_server(monkeypatch, capsys)
    assert cli.main(["serve", "--port", str(free_port())]) == 0
    text = README.read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith(("| 4", "| 5"))}
    assert f"did not arrive within {HEADER_DEADLINE_S:g} s, or the body within {BODY_DEADLINE_S:g} s" in rows["408"]
    assert f"over {MAX_HEAD_BYTES // 1024} KiB" in rows["431"]
    limit = seen["config"].limit_concurrency
    assert f"{limit} connections are open or {limit} requests in flight" in rows["503"]
    (runner,) = [line for line in text.splitlines() if line.startswith("| `cataract-screen serve")]
    assert (
        f"headers take over {HEADER_DEADLINE_S:g} s or body over {BODY_DEADLINE_S:g} s, and a client that reads "
        f"nothing of its answer for {WRITE_DEADLINE_S:g} s"
    ) in runner
