"""Model loading: the baked folder, S3 (moto), checksums, and every way a model can be wrong."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import onnx
import pytest
from moto import mock_aws

from cataract_inference.classifier import Classifier, softmax
from cataract_inference.model_source import ModelLoadError, load_baked, parse_s3_uri, resolve_model, sha256_of
from cataract_inference.settings import ConfigError, Settings, pixels_that_fit
from tests.support.onnx_models import build_tiny_model, rewrite_manifest, tiny_graph
from tests.support.s3 import publish_model_folder

BUCKET = "models-bucket"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"MODEL_CACHE_DIR": str(tmp_path / "cache"), **env})


def _publish(client: object, model_dir: Path, prefix: str = "cataract/v1/", sha: str | None = None) -> None:
    publish_model_folder(client, BUCKET, prefix, model_dir, sha)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> object:
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def test_baked_model_loads_and_is_verified(tiny_model_dir: Path) -> None:
    artifact = load_baked(tiny_model_dir)
    assert artifact.sha256 == sha256_of(tiny_model_dir / "model.onnx") == artifact.manifest.sha256


def test_pinned_sha_must_match(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        load_baked(tiny_model_dir, "0" * 64)


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="pull"):
        load_baked(tmp_path)


def test_model_and_manifest_that_do_not_belong_together(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    rewrite_manifest(model_dir, sha256="a" * 64)
    with pytest.raises(ModelLoadError, match="do not belong together"):
        load_baked(model_dir)


@pytest.mark.parametrize(
    "text",
    ["{not json", "[" * 200_000 + "]" * 200_000, '{"threshold": ' + "9" * 5000 + "}"],
    ids=["syntax", "nested-too-deep", "too-many-digits"],
)
def test_unreadable_manifest(tmp_path: Path, text: str) -> None:
    # The last two escaped as a bare RecursionError or ValueError that named no file.
    model_dir = build_tiny_model(tmp_path / "m")
    (model_dir / "model.json").write_text(text)
    with pytest.raises(ModelLoadError, match=r"model manifest .*model\.json is not readable JSON"):
        load_baked(model_dir)


def test_invalid_manifest(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    rewrite_manifest(model_dir, classes=["cataract"])
    with pytest.raises(ModelLoadError, match="invalid"):
        load_baked(model_dir)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_model_file_fails_to_load(tmp_path: Path, damage: str) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    path = model_dir / "model.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 50)
    rewrite_manifest(model_dir, sha256=sha256_of(path))  # even a matching checksum cannot save it
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        Classifier(load_baked(model_dir))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"name": "pixels", "size": 32}}, "input 'pixels'"),
        ({"input": {"size": 64}}, "input shape"),
        ({"classes": ["cataract", "normal", "other"]}, "3 classes"),
        ({"outputs": {"logits": "logits", "cam": "heat"}}, "lacks"),
    ],
)
def test_manifest_that_does_not_match_the_graph(tmp_path: Path, change: dict[str, object], message: str) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    rewrite_manifest(model_dir, **change)
    with pytest.raises(ModelLoadError, match=message):
        Classifier(load_baked(model_dir))


def test_a_graph_that_loads_but_cannot_run_on_the_manifests_input_fails_at_init(tmp_path: Path) -> None:
    # Symbolic height and width pass the shape check; a fixed reshape inside fails on 64 px. Without the warm-up
    # run at init, the model loaded and every request failed in ONNX Runtime.
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros((3 * 32 * 32, 2), dtype=np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 3 * 32 * 32], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "fixed-inside",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [weights, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir = build_tiny_model(tmp_path / "m", size=64, with_extras=False)
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match=r"does not run on the manifest's input \(1x3x64x64 float32\)"):
        Classifier(load_baked(model_dir))


def _symbolic_outputs(model: onnx.ModelProto) -> None:
    """Declare every output's shape as symbolic, so that only running the graph shows the real shapes."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for index, dim in enumerate(dims):
            dim.Clear()
            dim.dim_param = f"d{index}"


def _logits_of_hidden_width(model: onnx.ModelProto) -> None:
    # Reshaped to (batch, -1): ONNX Runtime's own shape inference cannot see the width either.
    next(n for n in model.graph.node if n.op_type == "MatMul").output[0] = "wide"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"))
    model.graph.node.extend(
        [
            onnx.helper.make_node("Shape", ["input"], ["batch"], end=1),
            onnx.helper.make_node("Concat", ["batch", "minus_one"], ["flat"], axis=0),
            onnx.helper.make_node("Reshape", ["wide", "flat"], ["logits"]),
        ]
    )


def _cam_of_one_channel(model: onnx.ModelProto) -> None:
    weights = next(i for i in model.graph.initializer if i.name == "Wc")
    weights.CopyFrom(onnx.numpy_helper.from_array(np.ones((1, 3, 1, 1), dtype=np.float32), "Wc"))


def _cam_of_rank_three(model: onnx.ModelProto) -> None:
    next(n for n in model.graph.node if n.op_type == "Conv").output[0] = "cam4"
    model.graph.node.append(onnx.helper.make_node("ReduceMean", ["cam4"], ["cam"], axes=[1], keepdims=0))


def _embedding_without_batch(model: onnx.ModelProto) -> None:
    model.graph.node.append(
        onnx.helper.make_node("ReduceMean", ["embedding"], ["flat_embedding"], axes=[0], keepdims=0)
    )
    model.graph.output.append(onnx.helper.make_tensor_value_info("flat_embedding", onnx.TensorProto.FLOAT, None))


@pytest.mark.parametrize(
    ("n_classes", "rewire", "outputs", "message"),
    [
        # Each loaded, warmed up and served: a 500 on every request, a 500 or a one-row heat map on explain=true,
        # or the first embedding value read as the gate's distance.
        (3, _logits_of_hidden_width, None, r"'logits' has shape \(1, 3\)"),
        (2, _cam_of_one_channel, None, r"'cam' has shape \(1, 1, 4, 4\)"),
        (2, _cam_of_rank_three, None, r"'cam' has shape \(1, 4, 4\)"),
        (2, None, {"logits": "logits", "ood_distance": "embedding"}, r"'embedding' has shape \(1, 3\).*one value"),
        (2, None, {"logits": "logits", "mid_distance": "embedding"}, r"'embedding' has shape \(1, 3\).*one value"),
        (
            2,
            _embedding_without_batch,
            {"logits": "logits", "embedding": "flat_embedding"},
            r"'flat_embedding' has shape \(3,\)",
        ),
    ],
)
def test_outputs_whose_real_shapes_do_not_fit_the_manifest_fail_at_init(
    tmp_path: Path, n_classes: int, rewire: object, outputs: dict[str, str] | None, message: str
) -> None:
    model = tiny_graph(32, n_classes=n_classes)
    if callable(rewire):
        rewire(model)
    _symbolic_outputs(model)
    model_dir = build_tiny_model(tmp_path / "m")
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"), **({"outputs": outputs} if outputs else {}))
    with pytest.raises(ModelLoadError, match=message):
        Classifier(load_baked(model_dir))


def test_an_output_named_as_the_empty_string_is_absent_as_null_is(tmp_path: Path) -> None:
    # Treated as absent everywhere else (if not names.cam), "" was refused as a name for two roles.
    model_dir = build_tiny_model(tmp_path / "m")
    data = json.loads((model_dir / "model.json").read_text())
    rewrite_manifest(model_dir, outputs={**data["outputs"], "cam": "", "mid_distance": ""})
    assert Classifier(load_baked(model_dir)).manifest.outputs.cam == ""


@pytest.mark.parametrize(
    ("outputs", "first", "second", "output"),
    [
        # Each passed init: the gate read the first embedding value as its distance, every explain=true was a 500
        # (IndexError), or one distance was checked against both caps.
        ({"ood_distance": "embedding"}, "embedding", "ood_distance", "embedding"),
        ({"cam": "embedding"}, "embedding", "cam", "embedding"),
        ({"mid_distance": "embedding"}, "embedding", "mid_distance", "embedding"),
        ({"mid_distance": "ood_distance"}, "ood_distance", "mid_distance", "ood_distance"),
        ({"cam": "logits"}, "logits", "cam", "logits"),
    ],
)
def test_one_graph_output_named_for_two_roles_is_refused_at_load(
    tmp_path: Path, outputs: dict[str, str], first: str, second: str, output: str
) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    data = json.loads((model_dir / "model.json").read_text())
    rewrite_manifest(model_dir, outputs={**data["outputs"], **outputs})
    with pytest.raises(
        ModelLoadError, match=f"outputs.{first} and outputs.{second} both name the graph output '{output}'"
    ):
        load_baked(model_dir)


def test_a_manifest_built_without_validation_still_gets_one_output_per_role_at_init(tiny_model_dir: Path) -> None:
    # Keyed by output name, the CAM's shape check replaced the embedding's, and this served.
    import dataclasses

    from cataract_inference.manifest import OutputNames

    artifact = load_baked(tiny_model_dir)
    names = OutputNames.model_construct(logits="logits", embedding="embedding", cam="embedding")
    unchecked = dataclasses.replace(artifact, manifest=artifact.manifest.model_copy(update={"outputs": names}))
    with pytest.raises(ModelLoadError, match=r"graph outputs \['embedding'\] for more than one role"):
        Classifier(unchecked)


def test_an_embedding_left_unflattened_is_served_when_only_a_probe_could_read_it(tmp_path: Path) -> None:
    # Nothing reads the embedding but the eye probe, which flattens it: (1, 3, 1, 1) served before the shape check.
    model_dir = build_tiny_model(tmp_path / "m", outputs={"logits": "logits", "embedding": "pooled"})
    model = tiny_graph(32)
    model.graph.output.append(onnx.helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["N", 3, 1, 1]))
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    from tests.support.images import encoded, gradient

    assert Classifier(load_baked(model_dir)).predict_bytes(encoded(gradient(), "PNG")).label in ("cataract", "normal")


def test_graph_without_optional_outputs_still_serves(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m", with_extras=False)
    classifier = Classifier(load_baked(model_dir))
    from tests.support.images import encoded, gradient

    result = classifier.predict_bytes(encoded(gradient(), "PNG"), explain=True)
    assert result.heatmap_png is None and "ood_distance" not in result.quality.scores


def test_a_small_temperature_gives_certainty_not_nan() -> None:
    # Divided first, two large logits overflowed to inf - inf: NaN probabilities, never a referral.
    probs = softmax(np.array([[800.0, 700.0]]), temperature=1e-306)
    assert np.isfinite(probs).all() and probs[0].tolist() == [1.0, 0.0]


def test_temperature_softens_probabilities() -> None:
    logits = np.array([[2.0, 0.0]])
    sharp, soft = softmax(logits, 1.0)[0], softmax(logits, 2.0)[0]
    assert sharp[0] > soft[0] > 0.5
    assert np.allclose(sharp.sum(), 1.0) and np.allclose(soft.sum(), 1.0)
    assert softmax(np.array([[1000.0, -1000.0]]))[0][0] == pytest.approx(1.0)


def test_threshold_decides_referral(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m", threshold=0.2)
    classifier = Classifier(load_baked(model_dir))
    assert classifier.decide(np.array([0.25, 0.75])) == ("cataract", True)
    assert classifier.decide(np.array([0.15, 0.85])) == ("normal", False)


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://b/k/x.onnx") == ("b", "k/x.onnx")
    with pytest.raises(ModelLoadError):
        parse_s3_uri("s3:///key")


@pytest.mark.parametrize("uri_suffix", ["cataract/v1/", "cataract/v1/model.onnx"])
def test_s3_model_downloads_verifies_and_serves(
    s3: object, tiny_model_dir: Path, tmp_path: Path, uri_suffix: str
) -> None:
    _publish(s3, tiny_model_dir)
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/{uri_suffix}")
    artifact = resolve_model(settings)
    assert artifact.source == f"s3://{BUCKET}/cataract/v1/model.onnx"
    assert artifact.model_path.parent == tmp_path / "cache"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("model.onnx.")], "no temp files left"
    Classifier(artifact)


def test_s3_version_id_is_honoured(s3: object, tiny_model_dir: Path, tmp_path: Path) -> None:
    _publish(s3, tiny_model_dir)
    first = s3.head_object(Bucket=BUCKET, Key="cataract/v1/model.onnx")["VersionId"]  # type: ignore[attr-defined]
    s3.put_object(Bucket=BUCKET, Key="cataract/v1/model.onnx", Body=b"overwritten")  # type: ignore[attr-defined]
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))
    artifact = resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/", MODEL_S3_VERSION_ID=first))
    assert artifact.sha256 == sha256_of(tiny_model_dir / "model.onnx")


def test_s3_pinned_checksum_mismatch(s3: object, tiny_model_dir: Path, tmp_path: Path) -> None:
    _publish(s3, tiny_model_dir)
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/", MODEL_SHA256="f" * 64)
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        resolve_model(settings)


def test_s3_metadata_checksum_mismatch(s3: object, tiny_model_dir: Path, tmp_path: Path) -> None:
    _publish(s3, tiny_model_dir, sha="e" * 64)
    with pytest.raises(ModelLoadError, match="object metadata"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"s3://{BUCKET}/cataract/v9/", "does not exist"),
        ("s3://no-such-bucket/cataract/v1/", r"^bucket of s3://no-such-bucket/\S* does not exist \(check MODEL_S3_URI"),
    ],
)
def test_s3_missing_objects(s3: object, tiny_model_dir: Path, tmp_path: Path, uri: str, message: str) -> None:
    _publish(s3, tiny_model_dir)
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=uri))


class _RefusingS3:
    """An S3 client whose every GET is refused with ``code`` and S3's own ``message``."""

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message

    def get_object(self, **_: object) -> object:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": self.code, "Message": self.message}}, "GetObject")


@pytest.mark.parametrize(
    ("code", "s3_says", "advice"),
    [
        ("AccessDenied", "not authorized to perform: kms:Decrypt on key arn:aws:kms:k", "does not exist"),
        ("AccessDenied", "not authorized to perform: kms:Decrypt on key arn:aws:kms:k", "KMS key"),
        # Published outside the prefix the template grants: the message names the parameter that fixes it.
        ("AccessDenied", "Access Denied", "read only its ModelS3Prefix (models/cataract unless set)"),
        ("PermanentRedirect", "The bucket is in this region: eu-west-1", "AWS_DEFAULT_REGION"),
        ("SlowDown", "Please reduce your request rate.", "SlowDown"),
    ],
)
def test_s3_refusals_keep_s3s_own_reason_and_give_advice_that_works(
    tmp_path: Path, code: str, s3_says: str, advice: str
) -> None:
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")
    with pytest.raises(ModelLoadError) as info:
        resolve_model(settings, _RefusingS3(code, s3_says))
    assert f"S3 said: {s3_says}" in str(info.value)
    assert advice in str(info.value)
    assert "set AWS_REGION" not in str(info.value)  # reserved on Lambda, and botocore does not read it


def test_s3_without_credentials(tmp_path: Path) -> None:
    # A fresh process: botocore and moto keep process-wide state that earlier tests may have touched.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MODEL_S3_URI": "s3://bucket/cataract/v1/",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    code = (
        "from cataract_inference.model_source import resolve_model\n"
        "from cataract_inference.settings import Settings\n"
        "resolve_model(Settings.from_env())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ModelLoadError: no AWS credentials" in result.stderr


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"AWS_PROFILE": "missing"}, "The config profile (missing) could not be found. AWS_PROFILE names a profile"),
        (
            {"AWS_PROFILE": "broken"},
            "the AWS credentials to read s3://bucket/cataract/v1/model.json could not be obtained: Error when "
            "retrieving credentials from custom-process. Fix the AWS profile in use (AWS_PROFILE",
        ),
        (
            {"AWS_DEFAULT_REGION": "us east 1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
            "doesn't match a supported format. Set AWS_DEFAULT_REGION (or the profile's region) to the bucket's region",
        ),
        (
            {"AWS_ENDPOINT_URL_S3": "not a url", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
            "cannot make an S3 client to read s3://bucket/cataract/v1/model.json: Invalid endpoint: not a url. Check "
            "AWS_ENDPOINT_URL_S3",
        ),
        (
            {"AWS_PROFILE": "chained"},
            "cannot make an S3 client to read s3://bucket/cataract/v1/model.json: The source_profile",
        ),
    ],
    ids=["missing-profile", "failing-credential-process", "invalid-region", "malformed-endpoint", "broken-role-chain"],
)
def test_an_s3_client_that_cannot_be_made_means_cannot_start_and_names_the_setting(
    tmp_path: Path, env: dict[str, str], said: str
) -> None:
    # Raised as botocore made the client, outside the S3 calls' error handling: a botocore traceback (exit 1), or
    # for the region a usage error (exit 2), where every other model fault is "cannot start" (exit 3).
    from PIL import Image

    config = tmp_path / "config"
    config.write_text(
        "[profile broken]\ncredential_process = /bin/false\n"
        "[profile chained]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = nosuch\n"
    )
    photo = tmp_path / "eye.png"
    Image.new("RGB", (64, 64), (120, 90, 80)).save(photo)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    run_env |= {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MODEL_S3_URI": "s3://bucket/cataract/v1/",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-m", "cataract_inference.cli", "predict", str(photo)],
        check=False,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("cataract-screen: cannot start: ") and said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_s3_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ModelLoadError, match="cannot reach S3"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI="s3://bucket/cataract/v1/"))


def test_cache_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(ModelLoadError, match="MODEL_CACHE_DIR"):
        resolve_model(Settings.from_env({"MODEL_S3_URI": "s3://bkt/k/", "MODEL_CACHE_DIR": str(blocker / "cache")}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_S3_URI": "https://bucket/x"}, "s3://"),
        ({"MODEL_SHA256": "abc"}, "64 hex"),
        ({"ORT_INTRA_OP_THREADS": "zero"}, "integer"),
        # int() takes these, and no one means them: "1_6" was 16 threads.
        ({"ORT_INTRA_OP_THREADS": "1_6"}, "plain digits"),
        ({"ORT_INTRA_OP_THREADS": "+2"}, "plain digits"),
        ({"MAX_IMAGE_SIDE": "\uff11\uff12\uff10\uff10\uff10"}, "plain digits"),
        ({"MAX_BODY_BYTES": "6291456000000"}, "<= 1073741824"),
        # Bucket names S3 can never have: botocore refused them, and init blamed the network.
        ({"MODEL_S3_URI": "s3://my bucket/models/v1/"}, "bucket name"),
        ({"MODEL_S3_URI": "s3://bucket?x/models/v1/"}, "bucket name"),
        ({"MODEL_S3_URI": "s3://https:/bucket/v1/"}, "bucket name"),
        ({"ORT_INTRA_OP_THREADS": "0"}, ">= 1"),
        ({"MAX_BODY_BYTES": "-5"}, ">= 1"),
        ({"MAX_IMAGE_PIXELS": "200000000"}, "<= 178956970"),
        # 89 MP of WebP peaked at 1501 MiB: more than a 1024 MB function has.
        ({"MAX_IMAGE_PIXELS": "89478485", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}, "at most 50724864"),
        # int() refused these with "Exceeds the limit (4300 digits)", naming no variable.
        ({"ORT_INTRA_OP_THREADS": "9" * 4400}, "ORT_INTRA_OP_THREADS must be <= 64, got a number of 4400 digits"),
        ({"MAX_IMAGE_SIDE": "9" * 40}, "MAX_IMAGE_SIDE must be far smaller"),
        ({"MAX_BODY_BYTES": "-" + "9" * 40}, "MAX_BODY_BYTES must be >= 1"),
        # An environment variable that is not UTF-8 reaches Python as lone surrogates: every answer was a 500.
        ({"DISCLAIMER": "D\udce9pistage"}, "DISCLAIMER is not valid UTF-8"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_a_number_with_leading_zeros_is_not_taken_for_a_long_one() -> None:
    assert Settings.from_env({"MAX_IMAGE_SIDE": "0" * 40 + "4000"}).max_image_side == 4000


@pytest.mark.parametrize("name", ["POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_powertools_name_is_refused_not_passed_on(name: str, blank: str) -> None:
    """Powertools took a blank one as it was: no log lines, metrics without the service dimension the alarms
    filter on, or a namespace CloudWatch cannot use."""
    from cataract_inference.settings import powertools_name

    assert powertools_name({}, name, "default") == "default"
    assert powertools_name({name: " svc "}, name, "default") == "svc"
    with pytest.raises(ConfigError, match=f"{name} is set but blank"):
        powertools_name({name: blank}, name, "default")


def test_the_default_pixel_limit_fits_the_smallest_memory_the_template_allows() -> None:
    from tests.infrastructure.conftest import load_template

    smallest = load_template()["Parameters"]["MemorySize"]["MinValue"]
    assert Settings.from_env({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(smallest)}).max_image_pixels == 40_000_000
    assert Settings.from_env({"MAX_IMAGE_PIXELS": "89478485", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048"})
    exactly = str(pixels_that_fit(1024))  # the figure the error names is itself accepted
    assert Settings.from_env({"MAX_IMAGE_PIXELS": exactly, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"})
    with pytest.raises(ConfigError, match=f"set it to at most {exactly}"):  # and one pixel more is not
        Settings.from_env({"MAX_IMAGE_PIXELS": str(int(exactly) + 1), "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"})
    assert pixels_that_fit(128) == 0  # below the overhead: nothing fits, never a negative figure


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.ort_intra_op_threads == 1
    assert settings.max_body_bytes == 6 * 1024 * 1024
    assert settings.model_s3_uri is None
    assert settings.model_dir.name == "model"
    assert settings.model_cache_dir == Path("/tmp/cataract-model")
    assert settings.disclaimer.startswith("Screening aid, not a diagnosis.")


@pytest.mark.parametrize(("threads", "spinning"), [(1, "0"), (2, "1"), (4, "1")])
def test_session_spins_only_with_helper_threads(threads: int, spinning: str) -> None:
    """ORT_INTRA_OP_THREADS reaches the session; helpers spin between parallel sections, a lone thread has none."""
    from cataract_inference.classifier import session_options

    opts = session_options(threads)
    assert opts.intra_op_num_threads == threads and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


@pytest.mark.parametrize("limit", ["MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS"])
def test_decode_limits_that_refuse_every_gradable_photo_are_refused_at_start(tiny_model_dir: Path, limit: str) -> None:
    """Accepted, they made every request a 413 naming a limit no photo could meet."""
    from cataract_inference.classifier import Classifier
    from cataract_inference.manifest import load_manifest

    smallest = load_manifest(tiny_model_dir / "model.json").gate.min_side
    below = smallest - 1 if limit == "MAX_IMAGE_SIDE" else smallest * smallest - 1
    settings = Settings.from_env({"MODEL_DIR": str(tiny_model_dir), limit: str(below)})
    with pytest.raises(ConfigError, match=f"refuse every photo this model can grade \\(at least {smallest}x{smallest}"):
        Classifier.from_settings(settings)
    edge = {"MAX_IMAGE_SIDE": str(smallest), "MAX_IMAGE_PIXELS": str(smallest * smallest)}
    assert Classifier.from_settings(Settings.from_env({"MODEL_DIR": str(tiny_model_dir), **edge}))


def test_a_gate_min_side_no_decodable_photo_reaches_blames_the_manifest_not_the_settings(tmp_path: Path) -> None:
    # It blamed MAX_IMAGE_SIDE and MAX_IMAGE_PIXELS and said to raise them, past the ceiling they may reach.
    model_dir = build_tiny_model(tmp_path / "m", gate={"min_side": 100_000})
    settings = Settings.from_env({"MODEL_DIR": str(model_dir)})
    with pytest.raises(ModelLoadError, match=r"the manifest of .* sets gate.min_side 100000: no photo"):
        Classifier.from_settings(settings)


@pytest.mark.parametrize("block", ["eye_score", "eye_probe"])
def test_a_gate_block_with_a_number_too_large_for_a_float_is_named(tmp_path: Path, block: str) -> None:
    huge = int("9" * 400)  # json reads it as an int; float() of it overflows
    value = (
        {"bias": huge, "w_distance": 1, "w_skin": 1, "centre": 1, "scale": 1, "min_score": 0}
        if block == "eye_score"
        else {"mean": [0.0, 0.0, 0.0], "weights": [1.0, 1.0, 1.0], "bias": huge, "min_score": 0.0}
    )
    model_dir = build_tiny_model(tmp_path / "m")
    gate = json.loads((model_dir / "model.json").read_text())["gate"]
    rewrite_manifest(model_dir, gate={**gate, block: value})
    with pytest.raises(ModelLoadError, match=f"the manifest's gate.{block} is malformed: OverflowError"):
        Classifier(load_baked(model_dir))


def _with_nan_weights(model: onnx.ModelProto) -> None:
    weights = next(i for i in model.graph.initializer if i.name == "W")
    weights.CopyFrom(onnx.numpy_helper.from_array(np.full((3, 2), np.nan, dtype=np.float32), "W"))


def _with_distance_of_the_mean_pixel(model: onnx.ModelProto) -> None:
    # sqrt of the mean normalised pixel: 0 for the warm-up's zeros, NaN for any photo darker than the mean.
    node = next(n for n in model.graph.node if n.op_type == "Sqrt")
    node.input[0] = "mean_pixel"
    model.graph.node.insert(0, onnx.helper.make_node("ReduceMean", ["input"], ["mean_pixel_4d"], keepdims=0))
    model.graph.node.insert(1, onnx.helper.make_node("Reshape", ["mean_pixel_4d", "one"], ["mean_pixel"]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))


def _saved_rewired(tmp_path: Path, rewire: Any) -> Path:
    model = tiny_graph(32)
    rewire(model)
    model_dir = build_tiny_model(tmp_path / "m")
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    return model_dir


def test_a_model_that_gives_nan_fails_at_init_not_on_every_request(tmp_path: Path) -> None:
    # It loaded, /health said ok, and every screening was a 500 (or, inside, "normal": NaN >= threshold is false).
    model_dir = _saved_rewired(tmp_path, _with_nan_weights)
    with pytest.raises(ModelLoadError, match=r"gives NaN or infinite values in its outputs \['logits'.*broken"):
        Classifier(load_baked(model_dir))


def test_a_nan_distance_for_one_photo_is_a_fault_not_a_gradable_answer(tmp_path: Path) -> None:
    # A NaN distance compares false with its cap: the eye check was silently passed and the photo screened.
    from PIL import Image

    from cataract_inference.classifier import NonFiniteOutputError
    from tests.support.images import encoded

    clf = Classifier(load_baked(_saved_rewired(tmp_path, _with_distance_of_the_mean_pixel)))
    bright = encoded(Image.new("RGB", (64, 64), (250, 250, 250)), "PNG")
    assert clf.predict_bytes(bright).quality.scores["ood_distance"] > 0  # a finite distance is served as before
    with pytest.raises(NonFiniteOutputError, match=r"\['ood_distance'\]"):
        clf.predict_bytes(encoded(Image.new("RGB", (64, 64), (20, 20, 20)), "PNG"))


def _exp_of_the_input(model: onnx.ModelProto) -> None:
    # exp() of each normalised pixel first: finite for ImageNet's values (at most e^2.7), inf beyond ~88.
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    pool.input[0] = "exp_input"
    model.graph.node.insert(0, onnx.helper.make_node("Exp", ["input"], ["exp_input"]))


def test_a_manifest_whose_preprocessing_breaks_the_model_fails_at_init_not_on_every_request(tmp_path: Path) -> None:
    # The warm-up fed zeros after normalisation: exp(0) is 1, and init passed; every photo, normalised by a std of
    # 0.01 to values up to 100, then overflowed to inf and was a 500.
    from tests.support.images import encoded, gradient

    model_dir = _saved_rewired(tmp_path, _exp_of_the_input)
    assert Classifier(load_baked(model_dir)).predict_bytes(encoded(gradient(), "PNG")).label  # ImageNet's: it serves
    data = json.loads((model_dir / "model.json").read_text())
    rewrite_manifest(model_dir, input={**data["input"], "mean": [0.0, 0.0, 0.0], "std": [0.01, 0.01, 0.01]})
    with pytest.raises(ModelLoadError, match=r"infinite values .* on a small synthetic photo preprocessed as model"):
        Classifier(load_baked(model_dir))


def test_the_warm_up_runs_the_manifests_resize_and_normalisation(tmp_path: Path) -> None:
    # Zeros, the old warm-up, are the normalised mean: a std, a mean or a crop the model cannot take never ran.
    model_dir = build_tiny_model(tmp_path / "m", input={"size": 32, "resize": "center_crop", "crop_fraction": 0.5})
    classifier = Classifier(load_baked(model_dir))
    fed: list[np.ndarray] = []
    original = classifier.run

    def spy(batch: np.ndarray) -> dict[str, np.ndarray]:
        fed.append(batch)
        return original(batch)

    classifier.run = spy  # type: ignore[method-assign]
    classifier.warm_up()
    (batch,) = fed
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    assert batch.min() < -1.5 and batch.max() > 2.0, "black and white pixels, normalised by ImageNet's mean and std"
    assert np.isfinite(batch).all()


def test_classifier_session_uses_the_configured_threads(tiny_model_dir: Path) -> None:
    clf = Classifier(load_baked(tiny_model_dir), intra_op_threads=2)
    assert clf.session.get_session_options().intra_op_num_threads == 2
    assert clf.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_model_from_other_folder_copy(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert load_baked(copy).sha256 == load_baked(tiny_model_dir).sha256
    onnx.checker.check_model(str(copy / "model.onnx"))


# --- model.json is strict: a typo, a stray key or an impossible value is refused, never defaulted -----------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshhold": 0.3}, "threshhold"),  # misspelt: would have served the default 0.5
        ({"gate": {"min_side": 8, "max_mid_distnce": 30.0}}, "max_mid_distnce"),  # the eye check silently off
        ({"schema_version": 99}, "schema_version 99"),
        ({"threshold": True}, "threshold"),
        ({"temperature": float("inf")}, "temperature"),
        ({"input": {"size": 32, "std": [0.0, 0.2, 0.2]}}, "std"),
        ({"outputs": {"logits": "logits"}, "gate": {"max_ood_distance": 3.0}}, "outputs.ood_distance"),
        # Limits no photo can meet: every answer "ungradable".
        ({"gate": {"min_brightness": 1.5, "max_brightness": 2.0}}, "leave out all of 0..1"),
        ({"gate": {"min_brightness": -1.0, "max_brightness": -0.5}}, "leave out all of 0..1"),
        ({"gate": {"min_contrast": 0.6}}, "gate.min_contrast 0.6 is above 0.5"),
        ({"gate": {"min_sharpness": 17.0}}, "gate.min_sharpness 17.0 is above 16.0"),
        # A class the service's own label shadows: "ungradable" beside gradable: true, and no referral.
        ({"classes": ["cataract", "ungradable"]}, "the service's label for a photo the gate refuses"),
        ({"temperature": 1e-308}, "temperature"),  # every probability NaN or 0/1: never referred
        ({"temperature": 1e6}, "temperature"),  # every probability pinned at 1/2
        ({"threshold": 1.0}, "threshold"),  # only a probability that rounds to 1.000000 referred
        # Every photo scaled to ~22400 px first: a MemoryError (on Lambda, out of memory) per request.
        (
            {"input": {"size": 224, "resize": "center_crop", "crop_fraction": 0.01}},
            r"crop_fraction 0.01 is outside 0.5",
        ),
        # Normalised past float32: a NonFiniteOutputError, a 500, per request.
        ({"input": {"size": 32, "std": [1e-36, 1e-36, 1e-36]}}, r"every std must lie within 0.001..1.*1e-36 overflows"),
        ({"input": {"size": 32, "std": [2.0, 0.2, 0.2]}}, r"every std must lie within 0.001..1.*above 1 it would"),
        ({"input": {"size": 32, "mean": [0.5, 3.0, 0.5]}}, r"every mean must lie within 0..1"),
    ],
    ids=[
        "misspelt",
        "misspelt-gate",
        "schema",
        "bool-threshold",
        "inf-temperature",
        "zero-std",
        "cap-no-output",
        "too-bright-floor",
        "too-dark-ceiling",
        "contrast-floor",
        "sharpness-floor",
        "reserved-class",
        "tiny-temperature",
        "huge-temperature",
        "threshold-one",
        "tiny-crop-fraction",
        "tiny-std",
        "std-above-one",
        "mean-not-a-pixel-value",
    ],
)
def test_a_manifest_that_would_serve_wrongly_is_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    rewrite_manifest(model_dir, **change)
    with pytest.raises(ModelLoadError, match=message):
        load_baked(model_dir)


_EYE_SCORE = {"bias": 0.0, "w_distance": -1.0, "w_skin": 1.0, "centre": 1.0, "scale": 1.0, "min_score": -5.0}
_EYE_PROBE = {"mean": [0.0, 0.0, 0.0], "weights": [1.0, 1.0, 1.0], "bias": 0.0, "min_score": -5.0}


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("gate", "min_side", True, r"gate\.min_side\n.*valid integer"),
        ("gate", "min_side", "64", r"gate\.min_side\n.*valid integer"),
        ("gate", "min_side", 64.0, r"gate\.min_side\n.*valid integer"),
        ("gate", "min_brightness", "0.1", r"gate\.min_brightness\n.*valid number"),
        ("gate", "max_brightness", True, r"gate\.max_brightness\n.*valid number"),
        ("gate", "min_contrast", "0.01", r"gate\.min_contrast\n.*valid number"),
        ("gate", "min_sharpness", False, r"gate\.min_sharpness\n.*valid number"),
        ("gate", "max_ood_distance", "12.5", r"gate\.max_ood_distance\n.*valid number"),
        ("gate", "eye_score", {**_EYE_SCORE, "min_score": "0.1"}, r"gate\.eye_score\.min_score must be a number"),
        ("gate", "eye_score", {**_EYE_SCORE, "scale": True}, r"gate\.eye_score\.scale must be a number"),
        ("gate", "eye_probe", {**_EYE_PROBE, "min_score": True}, r"gate\.eye_probe\.min_score must be a number"),
        ("gate", "eye_probe", {**_EYE_PROBE, "weights": ["1", 1, 1]}, r"gate\.eye_probe\.weights must hold numbers"),
        ("input", "size", "32", r"input\.size\n.*valid integer"),
        ("input", "crop_fraction", True, r"input\.crop_fraction\n.*valid number"),
        ("input", "mean", ["0.485", "0.456", "0.406"], r"input\.mean\.0\n.*valid number"),
        ("input", "std", [0.229, True, 0.225], r"input\.std\.1\n.*valid number"),
        (None, "schema_version", True, r"schema_version\n.*valid integer"),
    ],
)
def test_a_number_in_model_json_is_never_a_bool_or_a_string(
    tmp_path: Path, section: str | None, key: str, value: object, message: str
) -> None:
    # Coerced before: "0.1" served as 0.1 and true as 1 (a min_side of 1 px, a max_brightness of 1.0).
    model_dir = build_tiny_model(
        tmp_path / "m",
        gate={"min_side": 8, "min_brightness": 0, "max_brightness": 1, "min_contrast": 0, "max_ood_distance": 100},
        input={"size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]},
    )
    assert load_baked(model_dir).manifest.gate.max_brightness == 1.0, "a float may be written as an int"
    data = json.loads((model_dir / "model.json").read_text())
    if section is None:
        rewrite_manifest(model_dir, **{key: value})
    else:
        rewrite_manifest(model_dir, **{section: {**data[section], key: value}})
    with pytest.raises(ModelLoadError, match=message):
        load_baked(model_dir)


def test_the_bundled_manifest_still_loads() -> None:
    from cataract_inference.manifest import load_manifest
    from tests.conftest import BUNDLED_MODEL_DIR

    manifest = load_manifest(BUNDLED_MODEL_DIR / "model.json")
    assert manifest.input.crop_fraction == 0.875 and manifest.gate.min_side == 32


# --- what runs is what was hashed ----------------------------------------------------------------------------


def test_the_session_runs_the_verified_bytes_not_the_file_as_it_is_later(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    artifact = load_baked(model_dir)
    flipped = tiny_graph(32)
    for init in flipped.graph.initializer:  # the opposite classifier: dark -> cataract
        init.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(init), init.name))
    onnx.save(flipped, model_dir / "model.onnx")  # swapped after the hash, before the session
    classifier = Classifier(artifact)
    bright = np.ones((1, 3, 32, 32), dtype=np.float32)
    assert classifier.run(bright)["logits"][0, 0] > 0, "the verified model scores bright as cataract"


def test_a_model_with_external_weight_files_is_refused(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    model = onnx.load(model_dir / "model.onnx")
    onnx.save_model(model, model_dir / "model.onnx", save_as_external_data=True, size_threshold=0, location="w.bin")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match="external files"):
        Classifier(load_baked(model_dir))


def test_external_weights_in_the_working_directory_are_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ORT looked for them beside the process, not the model: a graph its optimiser leaves alone then ran weights no
    # sha256 covered, and swapping the file changed every answer under the same pins.
    from onnx import TensorProto, helper

    # 16 rows of logits added to the photo's mean: a graph ONNX Runtime's optimiser does not fold.
    weights = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[16, 2], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "128")):
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("ReduceMean", ["m"], ["m1"], axes=[1], keepdims=1),
            helper.make_node("Add", ["m1", "W"], ["logits"]),
        ],
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [16, 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_dir = build_tiny_model(tmp_path / "m", with_extras=False)
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "w.bin").write_bytes(np.tile(np.array([[7.0, -7.0]], dtype=np.float32), (16, 1)).tobytes())
    monkeypatch.chdir(cwd)
    with pytest.raises(ModelLoadError, match="external files"):
        Classifier(load_baked(model_dir))


def test_symbolic_input_sides_are_accepted_and_a_non_float_input_is_refused(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    model = onnx.load(model_dir / "model.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    Classifier(load_baked(model_dir))  # [N, 3, H, W] takes the manifest's 32x32
    # A valid graph that takes uint8 pixels and casts them itself: serving would feed it float32.
    model.graph.input[0].name = "pixels"
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["pixels"], ["input"], to=onnx.TensorProto.FLOAT))
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, input={"name": "pixels", "size": 32})
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match=r"input 'pixels' is tensor\(uint8\); serving feeds float32"):
        Classifier(load_baked(model_dir))


# --- S3: the right model.json, a bounded wait, the right object named ----------------------------------------


def test_s3_model_json_overwritten_after_publication_is_refused(
    s3: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _publish(s3, tiny_model_dir)
    key = "cataract/v1/model.json"
    tampered = (tiny_model_dir / "model.json").read_text().replace('"threshold": 0.5', '"threshold": 0.99')
    assert tampered != (tiny_model_dir / "model.json").read_text()
    meta = s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]  # type: ignore[attr-defined]
    s3.put_object(Bucket=BUCKET, Key=key, Body=tampered.encode(), Metadata=meta)  # type: ignore[attr-defined]
    with pytest.raises(ModelLoadError, match=r"not the model\.json published with this model\.onnx"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))


def _tamper_as_a_bucket_writer(s3: object, model_dir: Path) -> str:
    """What someone who can write to the prefix (not to the stack) can do: a model.json with the classes reversed,
    and every metadata hash rewritten to match it, over the same model bytes. Returns the published manifest's hash."""
    published = sha256_of(model_dir / "model.json")
    manifest = json.loads((model_dir / "model.json").read_text())
    manifest["classes"] = manifest["classes"][::-1]
    tampered = json.dumps(manifest).encode()
    digest = hashlib.sha256(tampered).hexdigest()
    onnx = (model_dir / "model.onnx").read_bytes()
    meta = {"sha256": sha256_of(model_dir / "model.onnx"), "manifest-sha256": digest}
    s3.put_object(Bucket=BUCKET, Key="cataract/v1/model.onnx", Body=onnx, Metadata=meta)  # type: ignore[attr-defined]
    s3.put_object(Bucket=BUCKET, Key="cataract/v1/model.json", Body=tampered, Metadata={"sha256": digest})  # type: ignore[attr-defined]
    return published


def test_a_bucket_writer_cannot_swap_model_json_under_the_pins(
    s3: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Metadata guards against accidents only: the bucket's writer rewrites it too. The pins printed by publish
    (MODEL_SHA256 and MODEL_MANIFEST_SHA256, both required by the template for a model from S3) hold."""
    _publish(s3, tiny_model_dir)
    published = _tamper_as_a_bucket_writer(s3, tiny_model_dir)
    uri, model_sha = f"s3://{BUCKET}/cataract/v1/", sha256_of(tiny_model_dir / "model.onnx")
    swapped = resolve_model(_settings(tmp_path / "a", MODEL_S3_URI=uri, MODEL_SHA256=model_sha))
    assert swapped.manifest.classes[0] == "normal", "the model's hash alone does not cover model.json"
    with pytest.raises(ModelLoadError, match=r"not the pinned model\.json sha256"):
        resolve_model(
            _settings(tmp_path / "b", MODEL_S3_URI=uri, MODEL_SHA256=model_sha, MODEL_MANIFEST_SHA256=published)
        )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_MANIFEST_SHA256": "a" * 64}, "needs it"),
        ({"MODEL_S3_URI": "s3://bkt/v1/", "MODEL_MANIFEST_SHA256": "xyz"}, "64 hex characters"),
    ],
)
def test_a_manifest_pin_is_checked_when_read(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_model_json_must_match_its_own_checksum_metadata_too() -> None:
    """A publication older than the model's manifest-sha256 still carries model.json's own sha256."""
    from cataract_inference.model_source import check_manifest_bytes

    data = b'{"name": "m"}'
    digest = hashlib.sha256(data).hexdigest()
    check_manifest_bytes(data, {}, {"sha256": digest.upper()}, "s3://b/v1/model.json")
    check_manifest_bytes(data, {"manifest-sha256": digest}, {}, "s3://b/v1/model.json")
    with pytest.raises(ModelLoadError, match=r"checksum mismatch for s3://b/v1/model\.json"):
        check_manifest_bytes(data, {}, {"sha256": "0" * 64}, "s3://b/v1/model.json")


def test_s3_names_the_missing_model_json_and_accepts_a_folder_without_its_slash(
    s3: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _publish(s3, tiny_model_dir)
    artifact = resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1"))
    assert artifact.source == f"s3://{BUCKET}/cataract/v1/model.onnx"
    s3.delete_object(Bucket=BUCKET, Key="cataract/v1/model.json")  # type: ignore[attr-defined]
    with pytest.raises(ModelLoadError, match=r"cataract/v1/model\.json does not exist"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))


def test_s3_upper_case_checksum_metadata_is_the_same_checksum(s3: object, tiny_model_dir: Path, tmp_path: Path) -> None:
    true_sha = sha256_of(tiny_model_dir / "model.onnx")
    _publish(s3, tiny_model_dir, sha=true_sha.upper())
    assert resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")).sha256 == true_sha
    # Still compared, not skipped for being upper case: a wrong one in capitals is refused.
    wrong = ("0" if true_sha[0] != "0" else "1") + true_sha[1:]
    _publish(s3, tiny_model_dir, prefix="cataract/v2/", sha=wrong.upper())
    with pytest.raises(ModelLoadError, match="object metadata"):
        resolve_model(_settings(tmp_path / "other-cache", MODEL_S3_URI=f"s3://{BUCKET}/cataract/v2/"))


class _StallingBody:
    """A response body that trickles a byte at a time, as a dying connection does. It gives up after 5 s
    (a broken deadline then fails the test on the checksum, instead of hanging the suite)."""

    def iter_chunks(self, _size: int) -> object:
        import time

        for _ in range(100):
            yield b"x"
            time.sleep(0.05)


class _StallingS3:
    def get_object(self, **_kwargs: object) -> dict[str, object]:
        return {"Body": _StallingBody(), "Metadata": {}}


def test_a_stalled_s3_download_fails_init_within_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cataract_inference import model_source

    monkeypatch.setattr(model_source, "S3_DEADLINE_S", 0.3)
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")
    with pytest.raises(ModelLoadError, match="did not deliver"):
        model_source.load_from_s3(settings, _StallingS3())


def test_a_legacy_bucket_name_botocore_accepts_is_accepted() -> None:
    # us-east-1 buckets made before March 2018 may have capitals and "_".
    uri = "s3://Legacy_Bucket/models/cataract/v1/"
    assert Settings.from_env({"MODEL_S3_URI": uri}).model_s3_uri == uri


def test_a_slow_credential_source_fails_init_at_the_deadline_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore resolves credentials as it makes the client: a slow credential_process once ran outside the
    # deadline, then the error blamed the network alone.
    from cataract_inference import model_source

    released = threading.Event()

    def slow_client() -> object:
        released.wait(5)
        return _StallingS3()

    monkeypatch.setattr(model_source, "S3_DEADLINE_S", 0.3)
    monkeypatch.setattr(model_source, "_s3_client", slow_client)
    started = time.monotonic()
    try:
        with pytest.raises(ModelLoadError, match=r"did not deliver.*credential"):
            model_source.load_from_s3(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))
        assert time.monotonic() - started < 3
    finally:
        released.set()


def test_a_refused_model_does_not_replace_the_verified_one_in_the_cache(
    s3: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _publish(s3, tiny_model_dir)
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")
    good = resolve_model(settings)
    other = build_tiny_model(tmp_path / "other", size=48)
    _publish(s3, other, prefix="cataract/v2/")
    pinned_to_v1 = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v2/", MODEL_SHA256=good.sha256)
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        resolve_model(pinned_to_v1)
    cache = tmp_path / "cache"
    assert sha256_of(cache / "model.onnx") == good.sha256
    assert json.loads((cache / "model.json").read_text())["sha256"] == good.sha256


def test_a_model_too_new_for_the_runtime_is_not_called_corrupt(tmp_path: Path) -> None:
    model = tiny_graph(32)
    model.ir_version = 99
    model_dir = build_tiny_model(tmp_path / "m")
    onnx.save(model, model_dir / "model.onnx")
    rewrite_manifest(model_dir, sha256=sha256_of(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match=r"IR version or opset that onnxruntime [0-9.]+ does not support"):
        Classifier(load_baked(model_dir))


def test_a_request_s3_cannot_take_is_blamed_on_the_settings_not_the_network() -> None:
    from botocore.exceptions import ParamValidationError

    from cataract_inference.model_source import _describe_s3_error

    message = _describe_s3_error(ParamValidationError(report="Invalid length for parameter VersionId"), "s3://b/k")
    assert "MODEL_S3_URI and MODEL_S3_VERSION_ID" in message and "cannot reach" not in message


class _S3StalledBeforeTheFirstByte:
    """A GET that never answers: connected, then silence (botocore's read timeout, retried, outlasts init)."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def get_object(self, **_kwargs: object) -> dict[str, object]:
        self.released.wait(5)  # released by the test; 5 s caps it if the deadline is broken
        return {"Body": _StallingBody(), "Metadata": {}}


def test_a_get_stalled_before_its_first_byte_fails_init_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cataract_inference import model_source

    monkeypatch.setattr(model_source, "S3_DEADLINE_S", 0.3)
    client = _S3StalledBeforeTheFirstByte()
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")
    start = time.monotonic()
    try:
        with pytest.raises(ModelLoadError, match=r"did not deliver s3://.*/cataract/v1/model\.onnx .*within 0\.3 s"):
            model_source.load_from_s3(settings, client)
        assert time.monotonic() - start < 3, "init waited for the stalled GET instead of failing at the deadline"
    finally:
        client.released.set()


def test_concurrent_cold_starts_sharing_a_cache_each_serve_their_own_model(s3: object, tmp_path: Path) -> None:
    first, second = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b", threshold=0.2)
    _publish(s3, first, prefix="cataract/v1/")
    _publish(s3, second, prefix="cataract/v2/")
    one = resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))
    two = resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v2/"))  # same cache folder
    assert Classifier(one).manifest.threshold == 0.5 and Classifier(two).manifest.threshold == 0.2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model.json", "model.onnx"], "no probe left"


class _CountingS3:
    """A real (moto) client that counts what it is asked for."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.calls: list[tuple[str, str]] = []

    def get_object(self, **kwargs: str) -> object:
        self.calls.append(("GET", kwargs["Key"]))
        return self.client.get_object(**kwargs)  # type: ignore[attr-defined]

    def head_object(self, **kwargs: str) -> object:
        self.calls.append(("HEAD", kwargs["Key"]))
        return self.client.head_object(**kwargs)  # type: ignore[attr-defined]


def test_a_cached_model_is_reused_only_when_model_json_records_its_sha256(s3: object, tmp_path: Path) -> None:
    first, second = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b", size=48, threshold=0.2)
    _publish(s3, first, prefix="cataract/v1/")
    _publish(s3, second, prefix="cataract/v2/")
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")
    counting = _CountingS3(s3)
    cold = resolve_model(settings, counting)
    assert ("GET", "cataract/v1/model.onnx") in counting.calls
    counting.calls.clear()
    warm = resolve_model(settings, counting)
    assert counting.calls == [("GET", "cataract/v1/model.json"), ("HEAD", "cataract/v1/model.onnx")]
    assert warm.model_bytes == cold.model_bytes and warm.sha256 == sha256_of(first / "model.onnx")

    counting.calls.clear()  # another version: its model.json records other bytes, so they are downloaded
    other = resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v2/"), counting)
    assert ("GET", "cataract/v2/model.onnx") in counting.calls
    assert Classifier(other).manifest.threshold == 0.2

    (tmp_path / "cache" / "model.onnx").write_bytes(b"tampered with in /tmp")
    counting.calls.clear()
    again = resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v2/"), counting)
    assert ("GET", "cataract/v2/model.onnx") in counting.calls
    assert again.sha256 == sha256_of(second / "model.onnx") == sha256_of(tmp_path / "cache" / "model.onnx")


def test_a_cache_holding_a_fifo_is_not_read_and_a_bad_version_id_is_named_with_a_warm_cache(
    s3: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _publish(s3, tiny_model_dir)
    cache = tmp_path / "cache"
    cache.mkdir()
    os.mkfifo(cache / "model.onnx")  # reading it would block init until the deadline
    settings = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/")
    assert resolve_model(settings).sha256 == sha256_of(tiny_model_dir / "model.onnx")
    assert (cache / "model.onnx").is_file()  # replaced by the verified download
    # Warm now: a version id that does not exist is named as such (a HEAD's bare 404 would say "no such key").
    pinned = _settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/", MODEL_S3_VERSION_ID="no-such-version")
    with pytest.raises(ModelLoadError, match="MODEL_S3_VERSION_ID"):
        resolve_model(pinned)


def test_a_cached_model_is_still_held_to_the_pins_and_the_object_metadata(
    s3: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _publish(s3, tiny_model_dir)
    resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/", MODEL_SHA256="0" * 64))
    _publish(s3, tiny_model_dir, sha="e" * 64)  # the object's metadata now disagrees with its bytes
    with pytest.raises(ModelLoadError, match="object metadata"):
        resolve_model(_settings(tmp_path, MODEL_S3_URI=f"s3://{BUCKET}/cataract/v1/"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORT_INTRA_OP_THREADS": "5000"}, "<= 64"),
        ({"MODEL_S3_VERSION_ID": "abc"}, "needs MODEL_S3_URI"),
    ],
)
def test_settings_that_would_misbehave_at_init_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
