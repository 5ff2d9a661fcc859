"""Smoke test: moto's CloudFormation creates a stack from the translated template.

moto ignores much (versioning, public-access blocks, aliases, usage plans, alarms), so the assertions on the
template's content live in test_template_translation.py. This proves the translated template is a stack that
resolves: its references, conditions and Sub strings, with the resources moto does model checked afterwards.
Two shims, both about moto, not the template:
- moto has no AWS::Lambda::Alias, so the permissions that name the alias name the function instead;
- moto ignores a RestApi's Body, so the patched RestApi imports it (as API Gateway does), giving the
  deployment its methods.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from .conftest import PLACEHOLDER_CODE_URI, REPO, deployed, load_template, parameter_values, translate

STACK = "cataract-smoke"


def shimmed(cfn: dict[str, Any]) -> dict[str, Any]:
    cfn = json.loads(json.dumps(cfn))
    for resource in cfn["Resources"].values():
        if resource["Type"] == "AWS::Lambda::Permission":
            resource["Properties"]["FunctionName"] = {"Ref": "InferenceFunction"}
    return cfn


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from moto import mock_aws
    from moto.apigateway import models as apigateway_models

    original = vars(apigateway_models.RestAPI)["create_from_cloudformation_json"].__func__

    def with_body(
        cls: type,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        api = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        body = cloudformation_json["Properties"].get("Body")
        if body:
            backend = apigateway_models.apigateway_backends[account_id][region_name]
            backend.put_rest_api(api.id, body, fail_on_warnings=False)
        return api

    monkeypatch.setattr(apigateway_models.RestAPI, "create_from_cloudformation_json", classmethod(with_body))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto warns for each resource type it does not model
        with mock_aws():
            yield


def upload_zip_code() -> None:
    """What `sam deploy` does for DeployCheckFunction: zip its folder, upload it, point CodeUri at it."""
    import io
    import zipfile

    import boto3

    bucket, key = PLACEHOLDER_CODE_URI.removeprefix("s3://").split("/", 1)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((REPO / "functions" / "deploy_check").glob("*.py")):
            zf.write(path, path.name)
    boto3.client("s3").create_bucket(Bucket=bucket)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=archive.getvalue())


def create_stack(overrides: dict[str, str] | None = None) -> dict[str, Any]:
    import boto3

    upload_zip_code()
    template = load_template()
    values = parameter_values(template, overrides)
    body = json.dumps(shimmed(translate(template, values)))
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName=STACK,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in (overrides or {}).items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def test_stack_creates_with_defaults(aws: None) -> None:
    import boto3

    outputs = create_stack()
    assert outputs["ApiUrl"].startswith("https://") and outputs["ApiUrl"].endswith("/Prod/")

    function = boto3.client("lambda").get_function_configuration(FunctionName=outputs["FunctionName"])
    assert function["Timeout"] == 28 and function["MemorySize"] == 2048
    env = function["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == STACK
    assert "MODEL_S3_URI" not in env
    # The deploy check is created from the uploaded zip. (moto cannot describe it: it keeps the Ref to a version in
    # its environment as an object; test_template_translation checks that environment.)
    created = boto3.client("cloudformation").describe_stack_resources(StackName=STACK)[
        "StackResources"
    ]  # moto: some lack ids
    (check,) = [r for r in created if r.get("LogicalResourceId") == "DeployCheckFunction"]
    assert check["ResourceStatus"] == "CREATE_COMPLETE" and check["ResourceType"] == "AWS::Lambda::Function"

    s3 = boto3.client("s3")
    bucket = outputs["ModelBucketName"]
    assert bucket.startswith(STACK + "-modelbucket")
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"

    api_id = outputs["ApiUrl"].split("//")[1].split(".")[0]
    resources = boto3.client("apigateway").get_resources(restApiId=api_id)["items"]
    methods = {(r["path"], m) for r in resources for m in r.get("resourceMethods", {})}
    assert {("/predict", "POST"), ("/health", "GET"), ("/model", "GET"), ("/docs", "GET")} <= methods

    logs = boto3.client("logs").describe_log_groups()["logGroups"]
    retention = {g["logGroupName"]: g.get("retentionInDays") for g in logs}
    assert retention[outputs["FunctionLogGroupName"]] == 30

    iam = boto3.client("iam")
    role_name = function["Role"].rsplit("/", 1)[1]
    policies = set(iam.list_role_policies(RoleName=role_name)["PolicyNames"])
    assert policies == {"write-own-logs", "xray-write", "read-model-prefix"}
    document = iam.get_role_policy(RoleName=role_name, PolicyName="read-model-prefix")["PolicyDocument"]
    # moto hands back the stored document as text (a Python repr, after CloudFormation): compare the resolved ARN.
    text = unquote(document) if isinstance(document, str) else json.dumps(document)
    assert f"arn:aws:s3:::{bucket}/models/cataract/*" in text
    assert "${" not in text, "every Sub resolved"


def test_stack_creates_with_a_model_from_s3_and_every_option_on(aws: None) -> None:
    import boto3

    uri = "s3://example-models/models/cataract/2026-11-27/"
    overrides = {
        "ModelS3Uri": uri,
        "ModelSha256": "cd" * 32,
        "ModelManifestSha256": "ef" * 32,
        "AlarmEmail": "oncall@example.org",
        "CreateApiGatewayLogsRole": "true",
        "StageName": "v1",
    }
    outputs = create_stack(overrides)
    assert outputs["ApiUrl"].endswith("/v1/")
    env = boto3.client("lambda").get_function_configuration(FunctionName=outputs["FunctionName"])["Environment"]
    assert env["Variables"]["MODEL_S3_URI"] == uri
    assert env["Variables"]["MODEL_SHA256"] == "cd" * 32
    assert env["Variables"]["MODEL_MANIFEST_SHA256"] == "ef" * 32
    # moto skips these types; the deploy still declares them.
    declared = deployed(load_template(), overrides)["Resources"]
    assert {"ApiGatewayAccount", "AlarmEmailSubscription"} <= set(declared)
