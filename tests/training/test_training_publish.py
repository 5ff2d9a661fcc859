"""Publish and pull against moto: the layout serving reads, checksums, and clear errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from cataract_inference.manifest import Manifest, load_manifest, write_manifest
from cataract_inference.model_source import load_from_s3, sha256_of
from cataract_inference.settings import Settings
from cataract_training import publish

BUCKET = "models-bucket"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _model_dir(
    path: Path, version: str = "2026.01.01-test-1", payload: bytes = b"not really onnx", *, calibrated: bool = True
) -> Path:
    """A publishable folder; ``calibrated``: its gate records a calibration for these bytes, as the gate tool's."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(payload)
    manifest = Manifest(
        name="cataract-screen",
        version=version,
        created="2026-01-01T00:00:00+00:00",
        sha256=sha256_of(path / "model.onnx"),
        classes=("cataract", "normal"),
    )
    if calibrated:
        gate = manifest.gate.model_copy(update={"calibration": {"model_sha256": manifest.sha256}})
        manifest = manifest.model_copy(update={"gate": gate})
    write_manifest(manifest, path / "model.json")
    card = f"# Model card: cataract-screen {version}\n\nfor {payload!r}\n"
    (path / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    return path


@mock_aws
def test_a_model_whose_gate_was_never_calibrated_is_published_with_a_warning(
    tmp_path: Path, aws_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    plain = _model_dir(tmp_path / "v1", "v1", b"first model", calibrated=False)
    publish.publish(plain, f"s3://{BUCKET}/cataract/", client=s3)
    assert "gradability gate was never calibrated for this model" in capsys.readouterr().err
    publish.publish(_model_dir(tmp_path / "v2", "v2", b"second model"), f"s3://{BUCKET}/cataract/", client=s3)
    assert "never calibrated" not in capsys.readouterr().err


@mock_aws
def test_publish_then_pull_latest_and_version(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "v1", "v1", b"first model")
    ptr = publish.publish(src, f"s3://{BUCKET}/cataract/", client=s3)
    assert ptr["model_uri"] == f"s3://{BUCKET}/cataract/v1/model.onnx"
    head = s3.head_object(Bucket=BUCKET, Key="cataract/v1/model.onnx")
    assert head["Metadata"]["sha256"] == sha256_of(src / "model.onnx")
    latest = json.loads(s3.get_object(Bucket=BUCKET, Key="cataract/latest.json")["Body"].read())
    assert latest == {
        "version": "v1",
        "model_uri": ptr["model_uri"],
        "sha256": ptr["sha256"],
        "manifest_sha256": sha256_of(src / "model.json"),
    }

    publish.publish(_model_dir(tmp_path / "v2", "v2", b"second model"), f"s3://{BUCKET}/cataract", client=s3)
    dest = tmp_path / "function-model"
    got = publish.pull(f"s3://{BUCKET}/cataract", dest, client=s3)
    assert got["version"] == "v2"
    assert got["model_card"] == "published"
    assert (dest / "model.onnx").read_bytes() == b"second model"
    assert load_manifest(dest / "model.json").version == "v2"
    # The image bakes in the whole folder: the card must be the pulled model's, not the one before.
    assert (dest / "MODEL_CARD.md").read_text(encoding="utf-8").startswith("# Model card: cataract-screen v2\n")
    got = publish.pull(f"s3://{BUCKET}/cataract", dest, version="v1", client=s3)
    assert (dest / "model.onnx").read_bytes() == b"first model"
    assert "b'first model'" in (dest / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not [p for p in dest.iterdir() if p.name.startswith(".pull-")]

    # The function's own S3 loader reads what publish wrote, metadata check included.
    settings = Settings.from_env({"MODEL_S3_URI": ptr["model_uri"], "MODEL_CACHE_DIR": str(tmp_path / "cache")})
    artifact = load_from_s3(settings, s3)
    assert artifact.sha256 == ptr["sha256"]


@mock_aws
def test_pull_keeps_the_mode_of_the_files_it_replaces(tmp_path: Path, aws_env: None) -> None:
    # Pull's files were written fresh and renamed in: under a strict umask 0640, which the image keeps (COPY) and
    # the function's non-root user cannot read.
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    publish.publish(_model_dir(tmp_path / "m", "v1"), f"s3://{BUCKET}/p", client=s3)
    dest = _model_dir(tmp_path / "function-model", "v0", b"the model we had")
    names = ("model.onnx", "model.json", "MODEL_CARD.md")
    (dest / "MODEL_CARD.md").write_text("# Model card: cataract-screen v0\n", encoding="utf-8")
    for name in names:
        (dest / name).chmod(0o644)
    old_umask = os.umask(0o027)
    try:
        publish.pull(f"s3://{BUCKET}/p", dest, client=s3)
    finally:
        os.umask(old_umask)
    assert load_manifest(dest / "model.json").version == "v1"
    assert {name: (dest / name).stat().st_mode & 0o777 for name in names} == dict.fromkeys(names, 0o644)


@mock_aws
def test_pull_of_a_version_published_without_a_card_renders_one(tmp_path: Path, aws_env: None) -> None:
    from tests.support.s3 import publish_model_folder

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    # As versions published before cards travelled: no card, and no record of one in the model's metadata.
    publish_model_folder(s3, BUCKET, "p/v1/", _model_dir(tmp_path / "m", "v1"))
    assert publish.CARD not in s3.head_object(Bucket=BUCKET, Key="p/v1/model.onnx")["Metadata"]
    dest = _model_dir(tmp_path / "function-model", "v0", b"the model we had")
    got = publish.pull(f"s3://{BUCKET}/p", dest, version="v1", client=s3)
    assert got["model_card"].startswith("rendered")
    card = (dest / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.startswith("# Model card: cataract-screen v1\n")
    assert "v0" not in card and "the model we had" not in card


@mock_aws
def test_pull_refuses_a_card_of_another_version(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    publish.publish(_model_dir(tmp_path / "m", "v1"), f"s3://{BUCKET}/p", client=s3)
    s3.put_object(Bucket=BUCKET, Key="p/v1/MODEL_CARD.md", Body=b"# Model card: cataract-screen v9\n")
    dest = _model_dir(tmp_path / "function-model", "v0", b"the model we had")
    with pytest.raises(publish.PublishError, match="does not describe version v1"):
        publish.pull(f"s3://{BUCKET}/p", dest, client=s3)
    assert (dest / "model.onnx").read_bytes() == b"the model we had"  # untouched
    assert load_manifest(dest / "model.json").version == "v0"


@pytest.mark.parametrize(
    ("card", "message"),
    [
        (None, "no MODEL_CARD.md"),
        ("# Model card: cataract-screen 2025.01.01-old\n", "describes version 2025.01.01-old"),
    ],
)
def test_publish_refuses_a_missing_or_stale_card(tmp_path: Path, card: str | None, message: str) -> None:
    src = _model_dir(tmp_path / "m")
    if card is None:
        (src / "MODEL_CARD.md").unlink()
    else:
        (src / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    with pytest.raises(publish.PublishError, match=message):
        publish.publish(src, f"s3://{BUCKET}/p", client=object())


def test_publish_refuses_a_stale_manifest(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "m")
    (src / "model.onnx").write_bytes(b"retrained but not re-exported")
    with pytest.raises(publish.PublishError, match="checksum mismatch"):
        publish.publish(src, f"s3://{BUCKET}/p", client=object())


@mock_aws
def test_missing_bucket_is_explained(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    with pytest.raises(publish.PublishError, match=r"bucket does not exist|no such object"):
        publish.publish(_model_dir(tmp_path / "m"), "s3://no-such-bucket/p", client=s3)
    with pytest.raises(publish.PublishError, match="bucket does not exist"):
        publish.pull("s3://no-such-bucket/p", tmp_path / "out", client=s3)


def test_missing_credentials_are_explained(tmp_path: Path) -> None:
    # A fresh process: moto and botocore keep process-wide state that earlier tests may have touched.
    model_dir = _model_dir(tmp_path / "m")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for call in (
        f"publish.publish(Path({str(model_dir)!r}), 's3://{BUCKET}/p')",
        f"publish.pull('s3://{BUCKET}/p', Path({str(tmp_path / 'out')!r}))",
    ):
        code = f"from pathlib import Path\nfrom cataract_training import publish\n{call}"
        result = subprocess.run(
            [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode != 0
        assert "PublishError: no AWS credentials" in result.stderr, result.stderr[-2000:]


def test_bad_uri() -> None:
    with pytest.raises(publish.PublishError, match="s3://"):
        publish.split_uri("https://example.com/x")
    with pytest.raises(publish.PublishError, match="names no bucket"):
        publish.split_uri("s3:///models")
    assert publish.split_uri("s3://b") == ("b", "")
    assert publish.split_uri("s3://b/a/c/") == ("b", "a/c/")


@mock_aws
def test_a_published_version_is_immutable_but_a_retry_is_fine(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    publish.publish(_model_dir(tmp_path / "a", "v1", b"first model"), f"s3://{BUCKET}/p", client=s3)
    publish.publish(_model_dir(tmp_path / "a", "v1", b"first model"), f"s3://{BUCKET}/p", client=s3)  # a retry
    with pytest.raises(publish.PublishError, match="immutable"):
        publish.publish(_model_dir(tmp_path / "b", "v1", b"retrained"), f"s3://{BUCKET}/p", client=s3)
    got = s3.get_object(Bucket=BUCKET, Key="p/v1/model.onnx")
    assert got["Body"].read() == b"first model"
    assert got["Metadata"]["manifest-sha256"] == sha256_of(tmp_path / "a" / "model.json")


@mock_aws
def test_a_retry_uploads_nothing_again_so_a_pinned_object_version_stays_current(tmp_path: Path, aws_env: None) -> None:
    # A second upload of the same bytes made the first object version noncurrent: the bucket's lifecycle then
    # expires it, and a function pinned to it by ModelS3VersionId could no longer start.
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    src = _model_dir(tmp_path / "a", "v1", b"first model")
    first = publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    assert first["uploaded"] == "model.onnx, model.json, MODEL_CARD.md" and first["latest"] == "moved to v1"
    again = publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    assert again["uploaded"] == "nothing (already published)" and again["latest"] == "moved to v1"
    for name in ("model.onnx", "model.json", "MODEL_CARD.md"):
        versions = s3.list_object_versions(Bucket=BUCKET, Prefix=f"p/v1/{name}")["Versions"]
        assert len(versions) == 1, name


@mock_aws
def test_a_retry_replaces_a_card_corrected_since(tmp_path: Path, aws_env: None) -> None:
    # The card is not pinned: after `cataract-train card` or the gate calibration, publishing again updates it.
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "a", "v1", b"first model")
    publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    corrected = "# Model card: cataract-screen v1\n\ncorrected\n"
    (src / "MODEL_CARD.md").write_text(corrected, encoding="utf-8")
    again = publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    assert again["uploaded"] == "MODEL_CARD.md"
    assert s3.get_object(Bucket=BUCKET, Key="p/v1/MODEL_CARD.md")["Body"].read().decode() == corrected
    assert publish.publish(src, f"s3://{BUCKET}/p", client=s3)["uploaded"] == "nothing (already published)"


@mock_aws
def test_publish_refuses_a_version_that_cannot_name_its_folder(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    with pytest.raises(publish.PublishError, match="is not a version"):
        publish.publish(_model_dir(tmp_path / "a", "v1+int8", b"m"), f"s3://{BUCKET}/p", client=s3)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


@mock_aws
def test_a_version_older_tools_published_can_still_be_retried_and_made_latest(tmp_path: Path, aws_env: None) -> None:
    # The version rule is for new publications: "lr=3e-4" was publishable before it, and a rollback to it must work.
    from tests.support.s3 import publish_model_folder

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    old = _model_dir(tmp_path / "old", "2025.06.01-mnv2-lr=3e-4", b"old model")
    publish_model_folder(s3, BUCKET, "p/2025.06.01-mnv2-lr=3e-4/", old)  # as the older publish laid it out
    publish.publish(_model_dir(tmp_path / "new", "v2", b"new model"), f"s3://{BUCKET}/p", client=s3)
    rolled_back = publish.publish(old, f"s3://{BUCKET}/p", client=s3, make_latest=True)
    assert rolled_back["latest"] == "moved to 2025.06.01-mnv2-lr=3e-4"
    assert rolled_back["uploaded"] == "MODEL_CARD.md"  # the older publish had put no card


@mock_aws
def test_re_publishing_an_older_version_leaves_latest_on_the_newer_one(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    folders = {v: _model_dir(tmp_path / v, v, v.encode()) for v in ("v1", "v2", "v3")}
    for folder in folders.values():
        publish.publish(folder, f"s3://{BUCKET}/p", client=s3)

    def latest() -> str:
        return str(json.loads(s3.get_object(Bucket=BUCKET, Key="p/latest.json")["Body"].read())["version"])

    old = publish.publish(folders["v1"], f"s3://{BUCKET}/p", client=s3)
    assert latest() == "v3" and old["latest"].startswith("left at v3, published after v1")
    rolled_back = publish.publish(folders["v1"], f"s3://{BUCKET}/p", client=s3, make_latest=True)
    assert latest() == "v1" and rolled_back["latest"] == "moved to v1"
    # v3 is still newer than v1: publishing it again moves latest forward.
    assert publish.publish(folders["v3"], f"s3://{BUCKET}/p", client=s3)["latest"] == "moved to v3"
    assert latest() == "v3"


@mock_aws
def test_a_retry_after_the_pointer_failed_moves_it(
    tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    publish.publish(_model_dir(tmp_path / "v1", "v1", b"v1"), f"s3://{BUCKET}/p", client=s3)
    v2 = _model_dir(tmp_path / "v2", "v2", b"v2")
    real_put = s3.put_object

    def put_fails(**kwargs: Any) -> Any:
        if kwargs["Key"] == "p/latest.json":
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")
        return real_put(**kwargs)

    monkeypatch.setattr(s3, "put_object", put_fails)
    with pytest.raises(publish.PublishError):
        publish.publish(v2, f"s3://{BUCKET}/p", client=s3)
    monkeypatch.setattr(s3, "put_object", real_put)
    pointer = json.loads(s3.get_object(Bucket=BUCKET, Key="p/latest.json")["Body"].read())
    assert pointer["version"] == "v1"  # v2's files are up, its pointer is not
    retried = publish.publish(v2, f"s3://{BUCKET}/p", client=s3)
    assert retried["uploaded"] == "nothing (already published)" and retried["latest"] == "moved to v2"


@mock_aws
@pytest.mark.parametrize(
    ("name", "body", "message"),
    [("model.onnx", b"tampered", "checksum mismatch"), ("model.json", b'{"threshold": 0.99}', "overwritten")],
)
def test_pull_refuses_an_object_changed_after_publication(
    tmp_path: Path, aws_env: None, name: str, body: bytes, message: str
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    publish.publish(_model_dir(tmp_path / "m", "v1"), f"s3://{BUCKET}/p", client=s3)
    meta = s3.head_object(Bucket=BUCKET, Key=f"p/v1/{name}")["Metadata"]  # kept, as a careless overwrite keeps it
    s3.put_object(Bucket=BUCKET, Key=f"p/v1/{name}", Body=body, Metadata=meta)
    dest = _model_dir(tmp_path / "function-model", "v0", b"the model we had")
    with pytest.raises(publish.PublishError, match=message):
        publish.pull(f"s3://{BUCKET}/p", dest, client=s3)
    assert (dest / "model.onnx").read_bytes() == b"the model we had"  # untouched
    assert load_manifest(dest / "model.json").version == "v0"


@mock_aws
@pytest.mark.parametrize("pointer", [b"[1]", b'{"version": null}', b'{"version": 5}', b'{"version": "/"}'])
def test_pull_explains_a_pointer_that_names_no_version(tmp_path: Path, aws_env: None, pointer: bytes) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="p/latest.json", Body=pointer)
    with pytest.raises(publish.PublishError, match="names no version"):
        publish.pull(f"s3://{BUCKET}/p", tmp_path / "out", client=s3)


@mock_aws
def test_pull_into_a_file_and_publish_to_a_missing_bucket_are_explained(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    publish.publish(_model_dir(tmp_path / "m", "v1"), f"s3://{BUCKET}/p", client=s3)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(publish.PublishError, match="is a file"):
        publish.pull(f"s3://{BUCKET}/p", afile, client=s3)
    with pytest.raises(publish.PublishError, match="bucket nobucket does not exist"):
        publish.publish(_model_dir(tmp_path / "m", "v1"), "s3://nobucket/p", client=s3)


@mock_aws
def test_pull_with_the_printed_pins_refuses_what_a_bucket_writer_put_there(tmp_path: Path, aws_env: None) -> None:
    """The bucket's own metadata can be rewritten by whoever writes to it; the sha256s publish printed cannot."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "v1", "v1", b"first model")
    ptr = publish.publish(src, f"s3://{BUCKET}/cataract/", client=s3)
    pins = {"sha256": ptr["sha256"], "manifest_sha256": ptr["manifest_sha256"]}
    dest = tmp_path / "function-model"
    assert publish.pull(f"s3://{BUCKET}/cataract", dest, "v1", s3, **pins)["pinned"] == "both sha256s"
    by_manifest = publish.pull(
        f"s3://{BUCKET}/cataract", tmp_path / "by-manifest", "v1", s3, manifest_sha256=pins["manifest_sha256"]
    )
    assert by_manifest["pinned"] == "model.json, and model.onnx through the sha256 that model.json records"

    manifest = json.loads((src / "model.json").read_text())
    manifest["threshold"] = 0.99  # almost nothing referred
    tampered = json.dumps(manifest).encode()
    digest = hashlib.sha256(tampered).hexdigest()
    s3.put_object(Bucket=BUCKET, Key="cataract/v1/model.json", Body=tampered, Metadata={"sha256": digest})
    s3.put_object(
        Bucket=BUCKET,
        Key="cataract/v1/model.onnx",
        Body=b"first model",
        Metadata={"sha256": ptr["sha256"], "manifest-sha256": digest},
    )
    unpinned = publish.pull(f"s3://{BUCKET}/cataract", tmp_path / "unpinned", "v1", s3)
    assert unpinned["pinned"].startswith("no") and load_manifest(tmp_path / "unpinned" / "model.json").threshold == 0.99
    half = publish.pull(f"s3://{BUCKET}/cataract", tmp_path / "half", "v1", s3, sha256=ptr["sha256"])
    assert half["pinned"] == "only model.onnx: trusted the bucket's own metadata for model.json"
    assert load_manifest(tmp_path / "half" / "model.json").threshold == 0.99  # as the report says: not checked
    before = (dest / "model.json").read_bytes()
    with pytest.raises(publish.PublishError, match=r"not the pinned model\.json sha256"):
        publish.pull(f"s3://{BUCKET}/cataract", dest, "v1", s3, **pins)
    assert (dest / "model.json").read_bytes() == before, "nothing written"
    with pytest.raises(publish.PublishError, match="not the pinned --sha256"):
        publish.pull(f"s3://{BUCKET}/cataract", dest, "v1", s3, sha256="0" * 64)

    # Pinning model.json alone also pins model.onnx, as the report says: other model bytes with metadata to match
    # are refused through the sha256 that the pinned model.json records.
    original = (src / "model.json").read_bytes()
    assert hashlib.sha256(original).hexdigest() == pins["manifest_sha256"]
    s3.put_object(
        Bucket=BUCKET, Key="cataract/v1/model.json", Body=original, Metadata={"sha256": pins["manifest_sha256"]}
    )
    other = b"other model"
    s3.put_object(
        Bucket=BUCKET,
        Key="cataract/v1/model.onnx",
        Body=other,
        Metadata={"sha256": hashlib.sha256(other).hexdigest(), "manifest-sha256": pins["manifest_sha256"]},
    )
    with pytest.raises(publish.PublishError, match="checksum mismatch"):
        publish.pull(f"s3://{BUCKET}/cataract", dest, "v1", s3, manifest_sha256=pins["manifest_sha256"])


def _template_parameters() -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse((Path(__file__).resolve().parents[2] / "template.yaml").read_text())
    parameters: dict[str, Any] = template["Parameters"]
    return parameters


def test_publish_knows_the_templates_limit_on_model_s3_uri() -> None:
    assert _template_parameters()["ModelS3Uri"]["MaxLength"] == publish.MODEL_S3_URI_MAX_LENGTH


# CloudFormation names the bucket <stack>-modelbucket-<12 random characters>, cut to S3's 63 characters.
SAMCONFIG_PROD_BUCKET = "cataract-screening-prod-modelbucket-1a2b3c4d5e6f"
LONGEST_BUCKET = "cataract-screening-production-eu-west1"[:38] + "-modelbucket-1a2b3c4d5e6f"


@mock_aws
@pytest.mark.parametrize("bucket", [SAMCONFIG_PROD_BUCKET, LONGEST_BUCKET])
def test_the_printed_model_s3_uri_fits_the_template_and_serves(
    tmp_path: Path, aws_env: None, capsys: pytest.CaptureFixture[str], bucket: str
) -> None:
    """What publish tells an operator to deploy with passes the template's parameter checks under the bucket names
    CloudFormation generates, up to the longest, and the function loads the model from it."""
    import re

    from cataract_training.cli import main

    assert len(LONGEST_BUCKET) == 63
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    src = _model_dir(tmp_path / "m", "2026.11.27-mnv2-195611")
    assert main(["publish", f"s3://{bucket}/models/cataract", "--model-dir", str(src)]) == 0
    out, err = capsys.readouterr()
    import shlex

    from tests.infrastructure.conftest import sam_parameter_overrides

    # The command as printed, pasted into a shell, read by SAM CLI's own parser: every value, and an empty
    # ModelS3VersionId that clears a pin an earlier deploy left (a parameter left out keeps its previous value).
    printed = re.search(r"^serve it with: (sam deploy --parameter-overrides .*)$", out, re.M)
    assert printed is not None, out
    words = shlex.split(printed.group(1))
    [parsed] = sam_parameter_overrides([words[3:]])
    assert isinstance(parsed, dict), parsed
    assert parsed["ModelS3VersionId"] == ""
    uri, sha256, manifest_sha256 = parsed["ModelS3Uri"], parsed["ModelSha256"], parsed["ModelManifestSha256"]
    assert uri == f"s3://{bucket}/models/cataract/2026.11.27-mnv2-195611"
    assert "warning" not in err

    parameters = _template_parameters()
    for name, value in (("ModelS3Uri", uri), ("ModelSha256", sha256), ("ModelManifestSha256", manifest_sha256)):
        assert len(value) <= parameters[name].get("MaxLength", 4096), name
        assert re.fullmatch(parameters[name]["AllowedPattern"], value), name

    env = {"MODEL_S3_URI": uri, "MODEL_SHA256": sha256, "MODEL_MANIFEST_SHA256": manifest_sha256}
    artifact = load_from_s3(Settings.from_env({**env, "MODEL_CACHE_DIR": str(tmp_path / "cache")}), s3)
    assert artifact.sha256 == sha256


@mock_aws
def test_publish_warns_when_the_uri_it_prints_is_over_the_templates_limit(
    tmp_path: Path, aws_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from cataract_training.cli import main

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=LONGEST_BUCKET)
    src = _model_dir(tmp_path / "m", "2026.11.27-mnv2-195611")
    assert main(["publish", f"s3://{LONGEST_BUCKET}/models/cataract/team-a", "--model-dir", str(src)]) == 0
    err = capsys.readouterr().err
    assert "is 114 characters" in err and f"at most {publish.MODEL_S3_URI_MAX_LENGTH}" in err
    assert "ModelS3Prefix" in err


def _denied(operation: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, operation)


@mock_aws
def test_access_denied_names_the_permissions_publish_and_pull_use(
    tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # publish starts with HeadBucket (s3:ListBucket on the bucket, which also makes a missing key 404, not 403); the
    # message named only s3:PutObject/s3:GetObject. moto's IAM checks HeadBucket against no real action: stubbed.
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    def head_bucket(**_: Any) -> Any:
        raise _denied("HeadBucket")

    monkeypatch.setattr(s3, "head_bucket", head_bucket)
    with pytest.raises(publish.PublishError) as info:
        publish.publish(_model_dir(tmp_path / "m", "v1"), f"s3://{BUCKET}/models/cataract", client=s3)
    message = str(info.value)
    assert f"s3:ListBucket on the bucket (arn:aws:s3:::{BUCKET}" in message
    assert f"s3:PutObject and s3:GetObject on arn:aws:s3:::{BUCKET}/models/cataract/*" in message

    def get_object(**_: Any) -> Any:
        raise _denied("GetObject")

    monkeypatch.setattr(s3, "get_object", get_object)
    with pytest.raises(publish.PublishError) as info:
        publish.pull(f"s3://{BUCKET}/models/cataract", tmp_path / "out", client=s3)
    message = str(info.value)
    assert f"pull needs s3:GetObject on arn:aws:s3:::{BUCKET}/models/cataract/*" in message
    assert f"without s3:ListBucket on arn:aws:s3:::{BUCKET}" in message and "s3:PutObject" not in message


@pytest.mark.parametrize("card", [None, "# Model card: cataract-screen 2025.01.01-old\n"])
def test_the_card_command_publish_asks_for_is_one_the_cli_takes(tmp_path: Path, card: str | None) -> None:
    # It said `cataract-train card DIR`, which argparse refuses: the folder goes after --model-dir.
    import shlex

    from cataract_training.cli import build_parser

    src = _model_dir(tmp_path / "m")
    if card is None:
        (src / "MODEL_CARD.md").unlink()
    else:
        (src / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    with pytest.raises(publish.PublishError) as info:
        publish.publish(src, f"s3://{BUCKET}/p", client=object())
    command = str(info.value).split("`")[1]
    program, *argv = shlex.split(command)
    assert program == "cataract-train"
    args = build_parser().parse_args(argv)
    assert args.command == "card" and Path(args.model_dir) == src


def test_publish_names_a_card_that_is_not_utf8(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "m")
    card = src / "MODEL_CARD.md"
    card.write_bytes("# Model card: cataract-screen 2026.01.01-test-1\n\nDr. M\u00fcller \u2013 ok\n".encode("cp1252"))
    with pytest.raises(publish.PublishError, match=rf"{card} is not UTF-8 text .*--model-dir {src}"):
        publish.publish(src, f"s3://{BUCKET}/p", client=object())


@mock_aws
def test_pull_says_which_object_is_missing_and_what_to_do(tmp_path: Path, aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    dest = tmp_path / "dest"
    with pytest.raises(publish.PublishError) as info:  # nothing published: no latest.json, no version given
        publish.pull(f"s3://{BUCKET}/p", dest, client=s3)
    assert f"s3://{BUCKET}/p/latest.json does not exist" in str(info.value)
    assert "check the version" not in str(info.value)  # no version was given
    publish.publish(_model_dir(tmp_path / "m", "v1"), f"s3://{BUCKET}/p", client=s3)
    with pytest.raises(publish.PublishError) as info:
        publish.pull(f"s3://{BUCKET}/p", dest, version="v9", client=s3)
    assert f"s3://{BUCKET}/p/v9/model.onnx does not exist" in str(info.value) and "check --version" in str(info.value)


@mock_aws
def test_a_publish_that_failed_part_way_says_so_and_a_retry_finishes_it(
    tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "m", "v1", b"the model")
    real_upload = s3.upload_file

    def upload_fails_on_the_manifest(filename: str, bucket: str, key: str, **kwargs: Any) -> Any:
        if key.endswith("model.json"):
            raise botocore.exceptions.ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "PutObject")
        return real_upload(filename, bucket, key, **kwargs)

    monkeypatch.setattr(s3, "upload_file", upload_fails_on_the_manifest)
    with pytest.raises(publish.PublishError, match="Re-running the same publish is safe"):
        publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    monkeypatch.setattr(s3, "upload_file", real_upload)
    dest = _model_dir(tmp_path / "function-model", "v0", b"the model we had")
    with pytest.raises(publish.PublishError) as info:
        publish.pull(f"s3://{BUCKET}/p", dest, version="v1", client=s3)
    message = str(info.value)
    assert (
        f"s3://{BUCKET}/p/v1/model.json does not exist: model.onnx is there, so version v1 is half-published" in message
    )
    assert "half-published" in message and "`cataract-train publish` again" in message
    assert (dest / "model.onnx").read_bytes() == b"the model we had"
    # What the messages promise: the same publish again finishes the version.
    assert publish.publish(src, f"s3://{BUCKET}/p", client=s3)["uploaded"] == "model.json, MODEL_CARD.md"
    assert publish.pull(f"s3://{BUCKET}/p", dest, client=s3)["version"] == "v1"
    assert (dest / "model.onnx").read_bytes() == b"the model"


@contextlib.contextmanager
def _s3_denies(client: Any, operation: str, key: str | None = None, message: str = "Access Denied") -> Iterator[None]:
    """S3 answers ``operation`` (on ``key`` only, when given) with 403 AccessDenied, as for a role without
    s3:PutObject: botocore raises the ClientError from the answer, and the real ``upload_file`` wraps it."""
    from botocore.awsrequest import AWSResponse

    def answer(params: dict[str, Any], **_: Any) -> Any:
        if key is not None and not params["url_path"].endswith(f"/{key}"):
            return None
        error = {"Error": {"Code": "AccessDenied", "Message": message}, "ResponseMetadata": {}}
        return AWSResponse(params["url"], 403, {}, None), error

    event = f"before-call.s3.{operation}"
    client.meta.events.register(event, answer)
    try:
        yield
    finally:
        client.meta.events.unregister(event, answer)


@mock_aws
@pytest.mark.parametrize(
    ("operation", "size"),
    [("PutObject", 100), ("CreateMultipartUpload", 8 * 1024 * 1024 + 1)],  # upload_file's multipart threshold: 8 MiB
)
def test_s3_refusing_an_upload_is_explained_in_one_line_and_exits_2(
    tmp_path: Path,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    operation: str,
    size: int,
) -> None:
    # The real upload_file wraps S3's ClientError into boto3's S3UploadFailedError, which went up as a traceback.
    from cataract_training import cli

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "m", "v1", b"m" * size)
    (src / "MODEL_CARD.md").write_text("# Model card: cataract-screen v1\n", encoding="utf-8")
    with _s3_denies(s3, operation), pytest.raises(publish.PublishError) as info:
        publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    message = str(info.value)
    assert message.startswith(f"cannot publish to s3://{BUCKET}/p/v1/ ({operation} of model.onnx): access denied: ")
    assert f"s3:PutObject and s3:GetObject on arn:aws:s3:::{BUCKET}/p/*" in message
    assert "Re-running the same publish is safe" in message and "\n" not in message

    monkeypatch.setattr(publish, "_client", lambda: s3)
    argv = ["publish", f"s3://{BUCKET}/p", "--model-dir", str(src)]
    with _s3_denies(s3, operation):
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot publish to s3://{BUCKET}/p/v1/ ({operation} of model.onnx): access denied")
    assert "Traceback" not in err and "S3UploadFailedError" not in err
    assert cli.main(argv) == 0  # once S3 allows it, the same publish goes through
    assert s3.get_object(Bucket=BUCKET, Key="p/v1/model.onnx")["Body"].read() == b"m" * size


@mock_aws
def test_an_access_denied_that_says_more_keeps_s3_s_words(tmp_path: Path, aws_env: None) -> None:
    """A KMS key or an explicit deny: no s3: permission would fix it, and the hint alone would mislead."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "m", "v1", b"the model")
    said = "User: arn:aws:iam::1:user/u is not authorized to perform: kms:GenerateDataKey on resource: key/1"
    with _s3_denies(s3, "PutObject", message=said), pytest.raises(publish.PublishError) as info:
        publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    assert f"(PutObject of model.onnx): access denied (S3 said: {said}): publish needs" in str(info.value)


def test_the_s3_error_is_read_off_the_upload_error_s_message_when_boto3_chains_none() -> None:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    error = S3UploadFailedError(
        "Failed to upload m/model.onnx to b/p/v1/model.onnx: An error occurred (AccessDenied) when calling the "
        "PutObject operation: Access Denied"
    )
    found = publish._wrapped_client_error(error)
    assert isinstance(found, ClientError) and found.operation_name == "PutObject"
    assert found.response["Error"]["Code"] == "AccessDenied"
    assert publish._wrapped_client_error(S3UploadFailedError("something else")).args == ("something else",)


@mock_aws
def test_a_version_whose_card_upload_failed_is_half_published_until_a_retry_uploads_it(
    tmp_path: Path, aws_env: None
) -> None:
    # It was pulled as a version published without a card, and a card rendered from model.json (no gate section)
    # went into the image.
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "m", "v1", b"the model")
    with _s3_denies(s3, "PutObject", "MODEL_CARD.md"), pytest.raises(publish.PublishError) as info:
        publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    assert "(PutObject of MODEL_CARD.md): access denied" in str(info.value)
    assert s3.head_object(Bucket=BUCKET, Key="p/v1/model.json")["Metadata"]  # only the card is missing
    assert s3.head_object(Bucket=BUCKET, Key="p/v1/model.onnx")["Metadata"][publish.CARD] == "MODEL_CARD.md"

    dest = _model_dir(tmp_path / "function-model", "v0", b"the model we had")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(publish.PublishError) as info:
        publish.pull(f"s3://{BUCKET}/p", dest, version="v1", client=s3)
    message = str(info.value)
    assert (
        f"s3://{BUCKET}/p/v1/MODEL_CARD.md does not exist: model.onnx records that it was published with one, so "
        "version v1 is half-published" in message
    )
    assert "`cataract-train publish` again" in message and f"nothing was written to {dest}" in message
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # no .pull- folder left either

    again = publish.publish(src, f"s3://{BUCKET}/p", client=s3)
    assert again["uploaded"] == "MODEL_CARD.md" and again["latest"] == "moved to v1"
    got = publish.pull(f"s3://{BUCKET}/p", dest, client=s3)
    assert got["version"] == "v1" and got["model_card"] == "published"
    assert (dest / "MODEL_CARD.md").read_bytes() == (src / "MODEL_CARD.md").read_bytes()
    assert (dest / "model.onnx").read_bytes() == b"the model"


@mock_aws
def test_ctrl_c_during_publish_says_the_version_may_be_half_published_and_a_rerun_finishes_it(
    tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cataract_training import cli

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    src = _model_dir(tmp_path / "m", "v1")
    real_upload = s3.upload_file

    def interrupted_on_the_manifest(filename: str, bucket: str, key: str, **kwargs: Any) -> Any:
        if key.endswith("model.json"):
            raise KeyboardInterrupt
        return real_upload(filename, bucket, key, **kwargs)

    monkeypatch.setattr(s3, "upload_file", interrupted_on_the_manifest)
    monkeypatch.setattr(publish, "_client", lambda: s3)
    argv = ["publish", f"s3://{BUCKET}/p", "--model-dir", str(src)]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert f"s3://{BUCKET}/p/v1/ may be half-published" in err and "Run the same publish again" in err
    assert "model.pt" not in err  # the message for an interrupted fit
    monkeypatch.setattr(s3, "upload_file", real_upload)
    assert cli.main(argv) == 0
    assert json.loads(s3.get_object(Bucket=BUCKET, Key="p/latest.json")["Body"].read())["version"] == "v1"


def test_a_pull_left_behind_in_the_model_folder_is_never_committed(tmp_path: Path) -> None:
    """pull downloads into model/.pull-*/ first; a killed pull leaves it there, beside files the docs say to git add."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("needs git and the project's own checkout (.gitignore is checked by git itself)")
    leftover = "functions/inference/model/.pull-x1y2z3/model.onnx"
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", leftover], check=False)
    assert ignored.returncode == 0, f"{leftover} would be committed by `git add functions/inference/model`"
