"""checkov (its own venv, `make setup-tools`) fails no check on the template, nor on its SAM translation.

Every skip is declared next to the resource it concerns (Metadata.checkov.skip, with a comment saying why) and
listed in docs/deploy.md. The one exception is CKV_AWS_120 on the API stage that SAM generates: a generated
resource has no Metadata of its own, so the translated scan skips it by flag, with the same reason as the
skip on InferenceApi.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, TEMPLATE, load_template, parameter_values, tool, tool_env, translate

DOCS = REPO / "docs" / "deploy.md"
REQUIREMENTS = Path(__file__).with_name("requirements-checkov.txt")
# Checks skipped only on resources that SAM generates (they carry no Metadata), with the source resource whose
# Metadata skip gives the reason.
GENERATED_SKIPS = {"CKV_AWS_120": "InferenceApi"}


def checkov(target: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(tool("checkov")), "--file", str(target), "--framework", "cloudformation", "--output", "json",
         "--skip-download", "--compact", *extra],
        cwd=target.parent, env=tool_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert not isinstance(report, list), "one framework, one report"
    return report


def inline_skips(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(logical id, check id) -> justification, from each resource's Metadata.checkov.skip."""
    skips = {}
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skips[(name, skip["id"])] = skip.get("comment", "")
    return skips


@pytest.fixture(scope="module")
def source_report() -> dict[str, Any]:
    return checkov(TEMPLATE)


@pytest.fixture(scope="module")
def translated_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    template = load_template()
    path = tmp_path_factory.mktemp("checkov") / "translated.json"
    path.write_text(json.dumps(translate(template, parameter_values(template)), indent=1))
    return checkov(path, "--skip-check", ",".join(GENERATED_SKIPS))


def failures(report: dict[str, Any]) -> list[str]:
    return [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]


def test_checkov_is_the_locked_version(source_report: dict[str, Any]) -> None:
    pinned = next(line.split("==")[1] for line in REQUIREMENTS.read_text().splitlines() if line.startswith("checkov=="))
    assert source_report["summary"]["checkov_version"] == pinned


@pytest.mark.parametrize("which", ["source", "translated"])
def test_no_failed_checks(which: str, request: pytest.FixtureRequest) -> None:
    report = request.getfixturevalue(f"{which}_report")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 15, "checkov must have read the resources"
    assert summary["passed"] >= 20
    assert failures(report) == []


def test_every_skip_is_justified_and_documented() -> None:
    skips = inline_skips(load_template())
    assert skips, "expected the documented skips"
    documented = set(re.findall(r"\bCKV2?_AWS_\d+\b", DOCS.read_text())) if DOCS.is_file() else set()
    for (resource, check), comment in skips.items():
        assert len(comment.split()) >= 8, f"{resource} skips {check} without a real justification"
        assert check in documented, f"{check} (skipped on {resource}) is not explained in {DOCS.name}"
    for check, resource in GENERATED_SKIPS.items():
        assert (resource, check) in skips, f"{check} needs its reason on {resource}"
        assert check in documented


def test_every_skip_is_still_needed(source_report: dict[str, Any]) -> None:
    """A skip that no longer matches a check hides nothing and misleads: remove it."""
    skipped = {(c["resource"].split(".")[-1], c["check_id"]) for c in source_report["results"]["skipped_checks"]}
    assert set(inline_skips(load_template())) == skipped


def test_translated_scan_covers_the_generated_resources(translated_report: dict[str, Any]) -> None:
    checked = {
        c["resource"] for kind in ("passed_checks", "skipped_checks") for c in translated_report["results"][kind]
    }
    assert "AWS::ApiGateway::Stage.InferenceApiStage" in checked
    assert any(r.startswith("AWS::Lambda::Permission.") for r in checked)
    assert "AWS::Lambda::Function.InferenceFunction" in checked
