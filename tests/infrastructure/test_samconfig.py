"""samconfig.toml: a dev ("default") and a prod environment that deploy this template sensibly."""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any

import pytest

from .conftest import SAMCONFIG, deployed, load_template

ENVS = ["default", "prod"]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return tomllib.loads(SAMCONFIG.read_text())


def overrides(section: dict[str, Any]) -> dict[str, str]:
    raw = section.get("parameter_overrides", [])
    items = raw if isinstance(raw, list) else shlex.split(raw)
    return dict(item.split("=", 1) for item in items)


@pytest.mark.parametrize("env", ENVS)
def test_deploy_section_is_complete(config: dict[str, Any], env: str) -> None:
    deploy = config[env]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM", "roles have generated names: no CAPABILITY_NAMED_IAM"
    assert deploy["resolve_image_repos"] is True, "the image needs an ECR repository"
    assert deploy["resolve_s3"] is True
    assert deploy["fail_on_empty_changeset"] is False
    assert config[env]["validate"]["parameters"]["lint"] is True
    assert config[env]["global"]["parameters"]["stack_name"]


def test_prod_asks_before_changing_and_dev_does_not(config: dict[str, Any]) -> None:
    assert config["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
    assert config["default"]["deploy"]["parameters"]["confirm_changeset"] is False


def test_environments_are_separate_stacks(config: dict[str, Any]) -> None:
    stacks = {config[env]["global"]["parameters"]["stack_name"] for env in ENVS}
    prefixes = {config[env]["deploy"]["parameters"]["s3_prefix"] for env in ENVS}
    assert len(stacks) == len(prefixes) == len(ENVS)
    for stack in stacks:
        # The function's log group and the API name derive from it; CloudFormation allows letters, digits, '-'.
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,50}", stack), stack


@pytest.mark.parametrize("env", ENVS)
def test_parameter_overrides_are_valid_template_parameters(config: dict[str, Any], env: str) -> None:
    template = load_template()
    params = template["Parameters"]
    values = overrides(config[env]["deploy"]["parameters"])
    for name, value in values.items():
        assert name in params, f"{env}: {name} is not a template parameter"
        spec = params[name]
        if "AllowedValues" in spec:
            assert value in [str(v) for v in spec["AllowedValues"]], (env, name, value)
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), (env, name, value)
        if spec["Type"] == "Number":
            assert spec.get("MinValue", float("-inf")) <= float(value) <= spec.get("MaxValue", float("inf"))
    # And the deploy they describe translates.
    resources = deployed(template, values)["Resources"]
    stage = next(r for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage")
    assert stage["Properties"]["StageName"] == values.get("StageName", template["Parameters"]["StageName"]["Default"])


def test_prod_keeps_the_api_key_and_longer_logs(config: dict[str, Any]) -> None:
    prod = overrides(config["prod"]["deploy"]["parameters"])
    assert prod.get("ApiKeyRequired", "true") == "true"
    assert int(prod["LogRetentionDays"]) >= 365
