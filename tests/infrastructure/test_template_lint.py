"""cfn-lint (the version pinned in pyproject.toml) finds nothing in template.yaml: no error, warning or info."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version

import pytest

from .conftest import REPO, TEMPLATE

# One region per partition, plus regions that lack some services or features.
REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2", "eu-central-2", "us-gov-west-1", "cn-north-1"]


def run_lint(text: str, **config: object) -> list[str]:
    from cfnlint.api import ManualArgs, lint

    matches = lint(text, config=ManualArgs(**config))
    return [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches]


def test_cfn_lint_is_the_pinned_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [p for p in pyproject["project"]["optional-dependencies"]["dev"] if p.startswith("cfn-lint==")]
    assert pins, "cfn-lint must be pinned (==) in pyproject's dev extra: its rules drift between releases"
    assert version("cfn-lint") == pins[0].split("==")[1]


@pytest.mark.parametrize("region", REGIONS)
def test_template_lints_clean_in_every_partition(region: str) -> None:
    assert run_lint(TEMPLATE.read_text(), regions=[region], include_checks=["I"], include_experimental=True) == []


@pytest.mark.parametrize(
    ("mutation", "rule"),
    [
        (("Timeout: 28", "Timeout: 950"), "E3034"),  # over Lambda's 900 s maximum
        (("Type: AWS::CloudWatch::Alarm", "Type: AWS::CloudWatch::Alarmm"), "E3006"),  # unknown resource type
        (("SSEAlgorithm: aws:kms", "SSEAlgorithm: aws:kms2"), "E3030"),  # not an allowed value
    ],
    ids=["timeout", "resource-type", "enum"],
)
def test_lint_is_live_it_reports_a_broken_copy(mutation: tuple[str, str], rule: str) -> None:
    text = TEMPLATE.read_text()
    old, new = mutation
    assert text.count(old) >= 1, f"mutation target {old!r} is gone from the template; update this test"
    found = run_lint(text.replace(old, new, 1), regions=["us-east-1"])
    assert any(re.match(rule + r"\b", f) for f in found), found
