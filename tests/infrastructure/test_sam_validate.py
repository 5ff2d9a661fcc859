"""`sam validate --lint` (aws-sam-cli from its own venv, `make setup-tools`) accepts the template, offline.

It needs a region and no credentials. The samconfig environments turn lint on for `sam validate`, which a
template with a lint-only error proves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, SAMCONFIG, TEMPLATE, tool, tool_env

REQUIREMENTS = Path(__file__).with_name("requirements-sam.txt")
# An error only cfn-lint sees: SAM's translator passes an unknown plain-CloudFormation type through.
LINT_ONLY_BREAKAGE = ("Type: AWS::CloudWatch::Alarm\n", "Type: AWS::CloudWatch::Alarmm\n")


def sam(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("sam")), *args], cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=180, check=False
    )


def test_sam_cli_is_the_locked_version() -> None:
    pinned = next(
        line.split("==")[1] for line in REQUIREMENTS.read_text().splitlines() if line.startswith("aws-sam-cli==")
    )
    result = sam("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(pinned), result.stdout


def test_sam_validate_lint_accepts_the_template() -> None:
    result = sam("validate", "--lint", "--template-file", str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of samconfig.toml and the template (and a broken template) in a folder of their own."""
    shutil.copy(SAMCONFIG, tmp_path / "samconfig.toml")
    text = TEMPLATE.read_text()
    (tmp_path / "template.yaml").write_text(text)
    old, new = LINT_ONLY_BREAKAGE
    assert old in text, "the breakage target is gone from the template; update this test"
    (tmp_path / "broken.yaml").write_text(text.replace(old, new, 1))
    return tmp_path


@pytest.mark.parametrize("env", ["default", "prod"])
def test_samconfig_validate_lints(workdir: Path, env: str) -> None:
    good = sam("validate", "--config-env", env, "--template-file", "template.yaml", cwd=workdir)
    assert good.returncode == 0, good.stdout + good.stderr
    broken = sam("validate", "--config-env", env, "--template-file", "broken.yaml", cwd=workdir)
    assert broken.returncode != 0, "samconfig's validate section must turn lint on"
    assert "E3006" in broken.stdout + broken.stderr


def test_sam_build_copies_the_deploy_check_without_a_local_python_312(tmp_path: Path) -> None:
    """The zip function builds with no Python 3.12 on PATH (only the image needs Docker, so it is left out here)."""
    shutil.copy(TEMPLATE, tmp_path / "template.yaml")
    shutil.copytree(REPO / "functions" / "deploy_check", tmp_path / "functions" / "deploy_check")
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not shutil.which("python3.12", path=d)]
    env = {**tool_env(), "PATH": os.pathsep.join(path)}
    result = subprocess.run(
        [str(tool("sam")), "build", "DeployCheckFunction", "--template-file", "template.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = tmp_path / ".aws-sam" / "build"
    assert (built / "DeployCheckFunction" / "deploy_check.py").read_bytes() == (
        REPO / "functions" / "deploy_check" / "deploy_check.py"
    ).read_bytes()
    assert "CodeUri: DeployCheckFunction" in (built / "template.yaml").read_text()
