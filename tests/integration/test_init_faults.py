"""Init faults through the real runtime client: each gives a clear init error and the function never serves.

(Missing model, checksum mismatch and S3 down are in test_runtime_client.py; the library-level
cases are in tests/unit/test_model_loading.py.) Here: a truncated or corrupt model file whose
checksum matches its manifest, so ONNX Runtime is what refuses it; manifests that do not match
the model, or whose preprocessing every photo would fail; and a model cache that cannot be written
(/tmp not writable).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest

from cataract_inference.model_source import sha256_of
from tests.integration.test_runtime_client import expect_init_error
from tests.support.onnx_models import rewrite_manifest, tiny_graph
from tests.support.runtime_api import RuntimeApiStub


@pytest.fixture
def stub() -> Iterator[RuntimeApiStub]:
    server = RuntimeApiStub()
    yield server
    server.close()


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model, to break."""
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def _truncate(model: Path) -> None:
    path = model / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rewrite_manifest(model, sha256=sha256_of(path))  # the checksum passes: ORT must be the one to refuse


def _corrupt(model: Path) -> None:
    path = model / "model.onnx"
    data = bytearray(path.read_bytes())
    data[: min(64, len(data))] = b"\xde\xad\xbe\xef" * 16
    path.write_bytes(bytes(data))
    rewrite_manifest(model, sha256=sha256_of(path))


def _not_onnx(model: Path) -> None:
    path = model / "model.onnx"
    path.write_bytes(b"<html>403 Forbidden</html>")  # what a bad download looks like
    rewrite_manifest(model, sha256=sha256_of(path))


def _input_size(model: Path) -> None:
    data = json.loads((model / "model.json").read_text())
    rewrite_manifest(model, input={**data["input"], "size": 64})


def _input_name(model: Path) -> None:
    data = json.loads((model / "model.json").read_text())
    rewrite_manifest(model, input={**data["input"], "name": "pixels"})


def _missing_output(model: Path) -> None:
    data = json.loads((model / "model.json").read_text())
    rewrite_manifest(model, outputs={**data["outputs"], "cam": "gradcam"})


def _class_count(model: Path) -> None:
    rewrite_manifest(model, classes=["cataract", "normal", "other"])


def _output_for_two_roles(model: Path) -> None:
    # Init passed, /health said ok, and every explain=true was a 500 (the embedding read as a CAM).
    data = json.loads((model / "model.json").read_text())
    rewrite_manifest(model, outputs={**data["outputs"], "cam": "embedding"})


def _tiny_crop_fraction(model: Path) -> None:
    # Every photo scaled to ~22400 px before its crop: out of memory on each request.
    data = json.loads((model / "model.json").read_text())
    rewrite_manifest(model, input={**data["input"], "resize": "center_crop", "crop_fraction": 0.01})


def _tiny_std(model: Path) -> None:
    # Every photo normalised past float32: a 500 on each request.
    data = json.loads((model / "model.json").read_text())
    rewrite_manifest(model, input={**data["input"], "std": [1e-36, 1e-36, 1e-36]})


def _std_the_graph_cannot_take(model: Path) -> None:
    # A graph that takes exp() of its input, with a std (in bounds) that normalises photos to values up to 100:
    # finite on the zeros the warm-up fed, infinite for every photo.
    graph = tiny_graph(32)
    next(n for n in graph.graph.node if n.op_type == "AveragePool").input[0] = "exp_input"
    graph.graph.node.insert(0, onnx.helper.make_node("Exp", ["input"], ["exp_input"]))
    onnx.save(graph, model / "model.onnx")
    data = json.loads((model / "model.json").read_text())
    input_spec = {**data["input"], "mean": [0.0, 0.0, 0.0], "std": [0.01, 0.01, 0.01]}
    rewrite_manifest(model, sha256=sha256_of(model / "model.onnx"), input=input_spec)


def _manifest_not_json(model: Path) -> None:
    (model / "model.json").write_text('{"name": "cut off')


BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (how to break the model folder, errorType, a phrase the message must contain)
    "truncated-model": (_truncate, "ModelLoadError", "ONNX Runtime cannot load"),
    "corrupt-model": (_corrupt, "ModelLoadError", "ONNX Runtime cannot load"),
    "not-an-onnx-file": (_not_onnx, "ModelLoadError", "not an ONNX model"),
    "manifest-input-size": (_input_size, "ModelLoadError", "does not match the manifest's 3x64x64"),
    "manifest-input-name": (_input_name, "ModelLoadError", "input 'pixels' is not in the model"),
    "manifest-output-missing": (_missing_output, "ModelLoadError", "outputs ['gradcam'] that the model lacks"),
    "manifest-class-count": (_class_count, "ModelLoadError", "2 logits but the manifest lists 3 classes"),
    "manifest-not-json": (_manifest_not_json, "ModelLoadError", "not readable JSON"),
    "manifest-output-for-two-roles": (
        _output_for_two_roles,
        "ModelLoadError",
        "outputs.embedding and outputs.cam both name the graph output 'embedding'",
    ),
    "manifest-tiny-crop-fraction": (_tiny_crop_fraction, "ModelLoadError", "crop_fraction 0.01 is outside 0.5..1"),
    "manifest-tiny-std": (_tiny_std, "ModelLoadError", "every std must lie within 0.001..1"),
    "manifest-std-the-graph-cannot-take": (
        _std_the_graph_cannot_take,
        "ModelLoadError",
        "on a small synthetic photo preprocessed as model.json's input says",
    ),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_a_broken_model_folder_is_an_init_error(name: str, stub: RuntimeApiStub, model_copy: Path) -> None:
    breakage, error_type, phrase = BREAKAGES[name]
    breakage(model_copy)
    expect_init_error(stub, {"MODEL_DIR": str(model_copy)}, error_type, phrase)


@pytest.mark.parametrize("cache", ["file-in-the-way", "proc"])
def test_an_unwritable_model_cache_is_an_init_error(cache: str, stub: RuntimeApiStub, tmp_path: Path) -> None:
    # /tmp not writable. As root, permission bits do not stop writes, so the cache path is made
    # impossible instead: under a regular file, or inside /proc (which refuses new folders).
    if cache == "file-in-the-way":
        blocker = tmp_path / "tmp"
        blocker.write_text("a file where /tmp should be")
        path = blocker / "cataract-model"
    else:
        path = Path("/proc/cataract-model-cache")
    env = {
        "MODEL_S3_URI": "s3://models-bucket/cataract/v1/",
        "MODEL_CACHE_DIR": str(path),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: the cache check must come first
    }
    expect_init_error(stub, env, "ModelLoadError", "cannot write the model cache")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POWERTOOLS_LOG_LEVEL", "verbose"),  # read as the logger is built
        ("POWERTOOLS_METRICS_DISABLED", "maybe"),  # as the metrics are
        ("POWERTOOLS_TRACER_CAPTURE_ERROR", "maybe"),  # as the handler is decorated, after the model loaded
    ],
)
def test_a_powertools_variable_it_cannot_read_is_an_init_error_that_names_it(
    variable: str, value: str, stub: RuntimeApiStub, model_copy: Path
) -> None:
    # Powertools' own errors name no variable ("Unknown level: 'VERBOSE'", "invalid truth value 'maybe'").
    env = {"MODEL_DIR": str(model_copy), "POWERTOOLS_TRACE_DISABLED": "false", variable: value}
    expect_init_error(stub, env, "ConfigError", f"{variable}={value!r}")
