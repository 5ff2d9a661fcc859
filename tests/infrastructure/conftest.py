"""Shared helpers for the infrastructure tests: the template, its SAM translation, and the tools venv.

Nothing here deploys. ``translate`` runs samtranslator in-process the way ``sam validate`` does (a policy map
of ``{}``, a placeholder ``ImageUri``, and a placeholder S3 ``CodeUri`` for a local folder), and ``resolve``
evaluates the template's conditions for a set of parameter values, so tests can assert what CloudFormation would
create for a given deploy.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
SAMCONFIG = REPO / "samconfig.toml"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
PLACEHOLDER_IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/cataract-screening:placeholder"
PLACEHOLDER_CODE_URI = "s3://placeholder-bucket/placeholder-key.zip"

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The SAM template as a dict, with the short intrinsic tags (!Ref, !Sub...) expanded."""
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(path.read_text())


def translate(template: Mapping[str, Any], parameter_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Translate a SAM template to plain CloudFormation in-process, as ``sam validate`` does."""
    from samtranslator.parser.parser import Parser
    from samtranslator.public.exceptions import InvalidDocumentException
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(dict(template))
    for resource in sam.get("Resources", {}).values():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::Function" and props.get("PackageType") == "Image":
            props.setdefault("ImageUri", PLACEHOLDER_IMAGE_URI)  # `sam build` fills it from the Metadata
        elif resource.get("Type") == "AWS::Serverless::Function" and not str(props.get("CodeUri")).startswith("s3://"):
            assert (REPO / props["CodeUri"]).is_dir(), props["CodeUri"]  # `sam deploy` zips and uploads the folder
            props["CodeUri"] = PLACEHOLDER_CODE_URI
    try:
        return Translator(managed_policy_map={}, sam_parser=Parser()).translate(
            sam, parameter_values=dict(parameter_values or {}), passthrough_metadata=True
        )
    except InvalidDocumentException as exc:  # pragma: no cover - the message is the point
        raise AssertionError("SAM translation failed: " + "; ".join(c.message for c in exc.causes)) from exc


def parameter_values(template: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter's value for a deploy, as CloudFormation hands them over (strings): the defaults, then
    ``overrides``."""
    values = {name: spec.get("Default") for name, spec in template.get("Parameters", {}).items()}
    values.update(overrides or {})
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f"parameters without a default need a value: {missing}"
    return {name: str(value) for name, value in values.items()}


_NO_VALUE = object()


def resolve(node: Any, template: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    """Evaluate Ref-to-parameter (also inside Fn::Sub), the condition functions and Fn::If; drop AWS::NoValue.

    Other intrinsics (GetAtt, Ref to resources and pseudo-parameters) stay as they are.
    """
    conditions: dict[str, bool] = {}

    def condition(name: str) -> bool:
        if name not in conditions:
            conditions[name] = bool(evaluate(template["Conditions"][name]))
        return conditions[name]

    def evaluate(item: Any) -> Any:
        if isinstance(item, list):
            return [v for v in (evaluate(i) for i in item) if v is not _NO_VALUE]
        if not isinstance(item, dict):
            return item
        if len(item) == 1:
            ((key, arg),) = item.items()
            if key == "Ref" and arg == "AWS::NoValue":
                return _NO_VALUE
            if key == "Ref" and arg in params:
                return params[arg]
            if key == "Condition" and isinstance(arg, str):
                return condition(arg)
            if key == "Fn::Sub":
                text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                for name, value in params.items():
                    if name not in local:
                        text = text.replace("${" + name + "}", str(value))
                return {"Fn::Sub": text if isinstance(arg, str) else [text, evaluate(local)]}
            if key == "Fn::If":
                name, when_true, when_false = arg
                return evaluate(when_true if condition(name) else when_false)
            if key == "Fn::Equals":
                left, right = (evaluate(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not evaluate(arg[0])
            if key == "Fn::And":
                return all(evaluate(a) for a in arg)
            if key == "Fn::Or":
                return any(evaluate(a) for a in arg)
        return {k: v for k, v in ((k, evaluate(v)) for k, v in item.items()) if v is not _NO_VALUE}

    return evaluate(node)


def deployed(template: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The CloudFormation resources a deploy with ``overrides`` would create (conditions applied)."""
    params = parameter_values(template, overrides)
    cfn = translate(template, params)
    resources = {
        name: resource
        for name, resource in cfn["Resources"].items()
        if "Condition" not in resource or resolve({"Condition": resource["Condition"]}, cfn, params)
    }
    return resolve({"Resources": resources, "Outputs": cfn.get("Outputs", {})}, cfn, params)


def tool(name: str) -> Path:
    """A command from the tools venv (``make setup-tools``). Absent: a failure in CI, a skip elsewhere."""
    path = TOOLS_BIN / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = f"{path} is missing: run `make setup-tools` (its own venv under .venv-tools, apart from .venv)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def tool_env() -> dict[str, str]:
    """An environment for the AWS tools: a region, no telemetry, and no way to reach a real account."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        SAM_CLI_TELEMETRY="0",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        # checkov: no platform calls (there is no network here, and results must not depend on it).
        BC_SKIP_MAPPING="TRUE",
        CHECKOV_SKIP_DOWNLOAD="TRUE",
    )
    return env


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def cfn(template: dict[str, Any]) -> dict[str, Any]:
    """The translated template with the default parameter values (conditions left in place)."""
    return translate(template, parameter_values(template))


@pytest.fixture(scope="session")
def default_deploy(template: dict[str, Any]) -> dict[str, Any]:
    """What a deploy with all defaults creates."""
    return deployed(template)


_PARSE_OVERRIDES = """
import json, sys
import click
from samcli.cli.types import CfnParameterOverridesType
parsed = []
for argv in json.load(sys.stdin):
    try:
        parsed.append(CfnParameterOverridesType().convert(tuple(argv), None, None))
    except click.exceptions.BadParameter as exc:
        parsed.append(str(exc))
print(json.dumps(parsed))
"""


def sam_parameter_overrides(argvs: list[list[str]]) -> list[dict[str, str] | str]:
    """Each argument list (what the shell hands `sam deploy --parameter-overrides`) as SAM CLI's own parser reads
    it: a dict of parameter values, or the error it refuses the command with."""
    parsed: list[dict[str, str] | str] = _in_sam_python(_PARSE_OVERRIDES, argvs)
    return parsed


def _in_sam_python(script: str, given: Any) -> Any:
    """What ``script`` prints (JSON) when run by the interpreter SAM CLI's venv runs on, ``given`` on its stdin."""
    import json
    import subprocess

    python = Path(os.path.realpath(tool("sam"))).parent / "python3"
    result = subprocess.run(
        [str(python), "-c", script],
        input=json.dumps(given),
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


_SAM_LOCAL_EVENTS = """
import json, sys
from flask import Flask, request
from samcli.lib.providers.api_collector import ApiCollector
from samcli.local.apigw.event_constructor import construct_v1_event
spec = json.load(sys.stdin)
binary = [ApiCollector.normalize_binary_media_type(t) for t in spec["binary_media_types"]]
app = Flask(__name__)
app.add_url_rule("/predict", endpoint="/predict", view_func=lambda: "", methods=["POST"])
built = []
for content_type in spec["content_types"]:
    body = bytes.fromhex(spec["body_hex"])
    with app.test_request_context("/predict", method="POST", data=body, headers={"Content-Type": content_type}):
        try:
            event = construct_v1_event(request, 3000, binary, stage_name="Prod")
            built.append({"isBase64Encoded": event["isBase64Encoded"], "body": event["body"]})
        except UnicodeDecodeError as exc:
            built.append(str(exc))
print(json.dumps(built))
"""


def sam_local_events(
    binary_media_types: list[str], content_types: list[str], body: bytes
) -> list[dict[str, Any] | str]:
    """The REST event `sam local start-api` builds for a POST of ``body`` under each Content-Type, by SAM CLI's own
    code and the template's ``BinaryMediaTypes`` (as written there, ``image~1jpeg``): the event's
    ``isBase64Encoded`` and body, or the decoding error SAM answers with its own 502."""
    spec = {"binary_media_types": binary_media_types, "content_types": content_types, "body_hex": body.hex()}
    built: list[dict[str, Any] | str] = _in_sam_python(_SAM_LOCAL_EVENTS, spec)
    return built
