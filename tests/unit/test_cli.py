"""The local runner: make-event, invoke, predict, draw-eye, and a clear exit on a missing model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cataract_inference import cli
from cataract_inference.drawing import draw_eye


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


@pytest.mark.parametrize("flags", [["--http-api"], ["--raw"], ["--explain"]])
def test_make_event_variants_replay(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    image = tmp_path / "eye.jpg"
    draw_eye("normal").save(image)
    cli.main(["make-event", str(image), "-o", str(tmp_path / "e.json"), *flags])
    capsys.readouterr()
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
        (b"\xff\xfe not utf-8", "utf-8"),
    ],
    ids=["empty", "list", "s3-event", "truncated", "not-utf8"],
)
def test_invoke_refuses_a_file_that_is_not_an_event_with_a_message(
    model_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "event.json"
    path.write_bytes(content)
    assert cli.main(["invoke", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_draw_eye(tmp_path: Path) -> None:
    out = tmp_path / "eye.png"
    assert cli.main(["draw-eye", "cataract", "-o", str(out), "--seed", "3"]) == 0
    assert out.stat().st_size > 1000


def test_serve_prints_no_access_log(model_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's access log would print client addresses and whole query strings."""
    import uvicorn

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    assert cli.main(["-v", "serve", "--port", "0"]) == 0
    assert seen["access_log"] is False and seen["log_level"] == "info"
