"""The image the template builds runs the handler the tests drive.

The image cannot be built here (no Docker), so this checks the Dockerfile against the source: the CMD names
``module.attribute``; that module is the file the tests import, the Dockerfile copies it, and importing it
(on a tiny model, as a cold start would) gives a callable that takes (event, context).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, load_template

TEMPLATE_FUNCTION = "InferenceFunction"


def docker_paths() -> tuple[Path, Path]:
    metadata = load_template()["Resources"][TEMPLATE_FUNCTION]["Metadata"]
    context = (REPO / metadata["DockerContext"]).resolve()
    return context, context / metadata["Dockerfile"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(docker_paths()[1])


@pytest.fixture(scope="module")
def handler_target(dockerfile: list[tuple[str, str]]) -> tuple[str, str]:
    cmds = [args for keyword, args in dockerfile if keyword == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    cmd = json.loads(cmds[-1])  # exec form: the Lambda base image passes it to the runtime interface client
    assert isinstance(cmd, list) and len(cmd) == 1, f'CMD must be ["module.handler"], got {cmd}'
    module, _, attribute = cmd[0].rpartition(".")
    assert module and attribute, cmd
    return module, attribute


def test_base_image_is_the_lambda_python_312_image(dockerfile: list[tuple[str, str]]) -> None:
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"public\.ecr\.aws/lambda/python:3\.12(@sha256:[0-9a-f]{64})?", froms[0])


# What the RUN steps may call. public.ecr.aws/lambda/python:3.12 is Amazon Linux 2023-minimal: no findutils, which
# the 3.11 image (Amazon Linux 2) had (aws/aws-lambda-base-images#196). A `find` there failed every `sam build`.
BASE_IMAGE_COMMANDS = frozenset({"pip", "python", "python3"})


def test_run_steps_call_only_what_the_minimal_base_image_has(dockerfile: list[tuple[str, str]]) -> None:
    runs = [args for keyword, args in dockerfile if keyword == "RUN"]
    assert runs, "the Dockerfile installs nothing"
    for run in runs:
        for step in re.split(r"&&|\|\||;|\|", run):
            program = step.split()[0]
            assert program in BASE_IMAGE_COMMANDS, f"{program!r} may not exist in the 3.12 base image: {run}"


def test_everything_copied_into_the_task_root_is_made_readable_to_the_function_user(
    dockerfile: list[tuple[str, str]], tmp_path: Path
) -> None:
    """COPY keeps the build machine's modes, and Lambda runs the function as a non-root user: a checkout under
    umask 027 gave an image whose code and model that user could not read ("Permission denied" at init)."""
    copied = [args.split()[-1] for keyword, args in dockerfile if keyword == "COPY" and "LAMBDA_TASK_ROOT" in args]
    folders = {dest.rstrip("/") for dest in copied if dest.endswith("/") and dest != "${LAMBDA_TASK_ROOT}/"}
    assert folders == {"${LAMBDA_TASK_ROOT}/model", "${LAMBDA_TASK_ROOT}/cataract_inference"}
    last_copy = max(i for i, (keyword, _) in enumerate(dockerfile) if keyword == "COPY")
    fixes = [args for keyword, args in dockerfile[last_copy:] if keyword == "RUN" and "world_readable.py" in args]
    assert len(fixes) == 1 and all(folder in fixes[0].split() for folder in folders), fixes
    # And the script does what it is for, on a tree as a strict umask leaves it.
    tree = tmp_path / "task"
    (tree / "pkg" / "__pycache__").mkdir(parents=True)
    for path in (tree / "model.onnx", tree / "pkg" / "handler.py", tree / "pkg" / "__pycache__" / "h.pyc"):
        path.write_bytes(b"x")
        path.chmod(0o640)
    for folder in (tree, tree / "pkg", tree / "pkg" / "__pycache__"):
        folder.chmod(0o750)
    # Links are left alone: chmod follows them, out of the tree or nowhere (an editor's dangling lock file).
    outside = tmp_path / "private.key"
    outside.write_bytes(b"k")
    outside.chmod(0o600)
    (tree / "pkg" / "link.py").symlink_to(outside)
    (tree / "pkg" / ".#handler.py").symlink_to("root@host.123:1700000000")
    context, _ = docker_paths()
    subprocess.run([sys.executable, str(context / "world_readable.py"), str(tree)], check=True)
    assert outside.stat().st_mode & 0o777 == 0o600
    modes = {
        p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
        for p in [tree, *tree.rglob("*")]
        if not p.is_symlink()
    }
    assert modes == {
        "task": 0o755,
        "task/model.onnx": 0o644,
        "task/pkg": 0o755,
        "task/pkg/handler.py": 0o644,
        "task/pkg/__pycache__": 0o755,
        "task/pkg/__pycache__/h.pyc": 0o644,
    }


def test_cmd_is_the_handler_the_tests_import(handler_target: tuple[str, str]) -> None:
    module, attribute = handler_target
    assert (module, attribute) == ("cataract_inference.handler", "lambda_handler")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not importable from the test environment"
    context, _ = docker_paths()
    expected = context.joinpath(*module.split(".")).with_suffix(".py")
    assert Path(spec.origin).resolve() == expected, "the tests must import the file the image copies"


def test_handler_module_defines_the_attribute_as_event_context_function(handler_target: tuple[str, str]) -> None:
    module, attribute = handler_target
    context, _ = docker_paths()
    tree = ast.parse(context.joinpath(*module.split(".")).with_suffix(".py").read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attribute]
    assert len(functions) == 1, f"{module} must define {attribute} at top level"
    params = [a.arg for a in functions[0].args.args]
    assert len(params) == 2, f"{attribute}{tuple(params)} must take (event, context)"


def test_dockerfile_copies_the_handler_package_into_the_task_root(
    dockerfile: list[tuple[str, str]], handler_target: tuple[str, str]
) -> None:
    package = handler_target[0].split(".")[0]
    copies = [args.split() for keyword, args in dockerfile if keyword == "COPY"]
    assert any(
        src.rstrip("/") == package and dest.startswith("${LAMBDA_TASK_ROOT}") for *srcs, dest in copies for src in srcs
    ), f"no COPY of {package}/ into the task root"


def test_dockerfile_sources_exist_in_the_context(dockerfile: list[tuple[str, str]]) -> None:
    context, _ = docker_paths()
    missing = [
        src
        for keyword, args in dockerfile
        if keyword == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
        if not (context / src).exists()
    ]
    assert not missing, f"`sam build` would fail: missing from {context}: {missing}"


def test_handler_imports_and_is_callable_as_at_cold_start(handler_target: tuple[str, str], tmp_path: Path) -> None:
    """Import the module named by CMD in a fresh interpreter, on a tiny model, as the runtime client does."""
    module, attribute = handler_target
    script = textwrap.dedent(
        """
        import importlib, inspect, json, os, pathlib, sys
        from tests.support.onnx_models import build_tiny_model

        module, attribute, scratch = sys.argv[1:]
        os.environ["MODEL_DIR"] = str(build_tiny_model(pathlib.Path(scratch)))
        fn = getattr(importlib.import_module(module), attribute)
        print(json.dumps({"callable": callable(fn), "params": len(inspect.signature(fn).parameters)}))
        """
    )
    env: dict[str, Any] = {
        k: v
        for k, v in os.environ.items()
        # XDG_CACHE_HOME would move ONNX Runtime's files out of HOME, where this test looks for them.
        if not k.startswith(("MODEL_", "AWS_LAMBDA", "ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME"))
    }
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        POWERTOOLS_TRACE_DISABLED="true", POWERTOOLS_METRICS_NAMESPACE="Test", AWS_DEFAULT_REGION="us-east-1",
        HOME=str(home),
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", script, module, attribute, str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"callable": True, "params": 2}
    # ONNX Runtime's telemetry (a device id under $HOME, and reports to Microsoft) stays off.
    assert not list(home.rglob("*")), sorted(str(p.relative_to(home)) for p in home.rglob("*"))


def test_image_turns_off_onnxruntime_telemetry(dockerfile: list[tuple[str, str]]) -> None:
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert re.search(r"\bORT_DISABLE_TELEMETRY=1\b", env), env


def _canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (case, and runs of ``-_.``, do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_pins() -> dict[str, str]:
    """The image's requirements.txt as {canonical name: pinned version}; every line must pin exactly."""
    context, _ = docker_paths()
    pins: dict[str, str] = {}
    for raw in (context / "requirements.txt").read_text().splitlines():
        line = raw.split("#")[0].strip().removesuffix("\\").strip()
        if line and not line.startswith("--hash="):
            name, _, version = line.partition("==")
            assert version, f"requirements.txt must pin exactly: {line!r}"
            pins[_canonical(name.split("[")[0])] = version
    return pins


def test_image_requirements_pin_the_serving_dependencies_of_pyproject() -> None:
    """The image installs requirements.txt and the tests install pyproject.toml: the same versions, so what is
    tested is what ships (only the local runner's uvicorn stays out). boto3 is in both: the base image's would meet
    the botocore that aws-xray-sdk installs in /var/task, a pair nobody tested."""
    image = image_pins()
    serving = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in serving:
        name = _canonical(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        version = requirement.partition("==")[2]
        if name == "uvicorn":
            assert name not in image, "uvicorn is for the local runner, not the image"
            continue
        assert image.get(name) == version, f"{name}: pyproject pins {version!r}, requirements.txt {image.get(name)!r}"


def _pip_resolve(requirements: list[str], platform_args: list[str], report: Path) -> subprocess.CompletedProcess[str]:
    """``pip install --dry-run --target`` (what the Dockerfile runs, without installing), with a JSON report."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
         "--target", str(report.parent / "target"), "--report", str(report), *platform_args, *requirements],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


# The Lambda base image: CPython 3.12 on Amazon Linux 2023, glibc 2.34, so manylinux_2_17 up to _2_34.
LAMBDA_PYTHON = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_image_requirements_resolve_to_wheels_for_lambda_on_both_architectures(arch: str, tmp_path: Path) -> None:
    """The Dockerfile's `pip install --only-binary=:all: --require-hashes -r requirements.txt` finds a wheel of every
    pin for Lambda's Python 3.12 on x86_64 and on arm64 (template parameter Architecture) whose sha256 is pinned, and
    the lock is complete: it resolves to exactly the pinned packages, nothing unpinned pulled in. Checked against the
    package index without Docker."""
    context, _ = docker_paths()
    pins = image_pins()
    probe = _pip_resolve(["six"], [], tmp_path / "probe.json")  # any pure wheel: is an index there?
    if probe.returncode != 0:
        message = f"no package index is reachable from here (pip: {probe.stderr.strip()[-300:]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(17, 35)] + [f"manylinux2014_{arch}"]
    report = tmp_path / f"{arch}.json"
    result = _pip_resolve(
        ["--require-hashes", "-r", str(context / "requirements.txt")],
        [*LAMBDA_PYTHON, *(arg for p in platforms for arg in ("--platform", p))],
        report,
    )
    assert result.returncode == 0, f"no wheel for Lambda's Python 3.12 on {arch}:\n{result.stderr[-2000:]}"
    installs = json.loads(report.read_text())["install"]
    resolved = {_canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    assert resolved == pins, f"not pinned: {resolved.keys() - pins.keys()}; not needed: {pins.keys() - resolved.keys()}"
    wheels = [i["download_info"]["url"].rsplit("/", 1)[-1] for i in installs]
    compiled = [w for w in wheels if "none-any" not in w]
    assert compiled and all(arch in w for w in compiled), compiled
