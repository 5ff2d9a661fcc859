"""The SAM template, translated in-process, creates what the README promises: routes, key, limits, a private
bucket, least-privilege IAM, bounded function settings, alarms and outputs."""

from __future__ import annotations

import ast
import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cataract_inference.api import error_content
from cataract_inference.schemas import ErrorResponse
from cataract_inference.settings import DEFAULT_DISCLAIMER

from .conftest import REPO, deployed, parameter_values, resolve, sam_local_events

API_SOURCE = REPO / "functions" / "inference" / "cataract_inference" / "api.py"
KEYED_ROUTES = {("/predict", "post"), ("/model", "get")}
FASTAPI_DOC_ROUTES = {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}
API_GATEWAY_TIMEOUT_S = 29


def of_type(resources: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == type_}


def only(resources: dict[str, Any], type_: str) -> dict[str, Any]:
    found = of_type(resources, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    return next(iter(found.values()))


def refs(node: Any) -> set[str]:
    """Logical ids and parameters named by Ref, Fn::GetAtt or ${...} in Fn::Sub under ``node`` (not AWS::...)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
                if isinstance(value, list):
                    found.update(refs(value[1]))
            else:
                found.update(refs(value))
    elif isinstance(node, list):
        for item in node:
            found.update(refs(item))
    return {name for name in found if not name.startswith("AWS::")}


def app_routes() -> set[tuple[str, str]]:
    """The (path, method) pairs the FastAPI app serves, read from api.py's decorators and FastAPI's doc routes."""
    tree = ast.parse(API_SOURCE.read_text())
    routes: set[tuple[str, str]] = set()
    docs: dict[str, Any] = dict(FASTAPI_DOC_ROUTES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "FastAPI":
            for kw in node.keywords:
                if kw.arg in docs and isinstance(kw.value, ast.Constant):
                    docs[kw.arg] = kw.value.value  # None turns a doc route off
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target, method = node.func.value, node.func.attr
            if (
                isinstance(target, ast.Name)
                and target.id == "app"
                and method in {"get", "post", "put", "patch", "delete"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                routes.add((str(node.args[0].value), method))
            if isinstance(target, ast.Name) and target.id == "app" and method == "add_api_route":
                (methods,) = [kw.value for kw in node.keywords if kw.arg == "methods"]
                assert isinstance(methods, ast.List) and isinstance(node.args[0], ast.Constant)
                routes.update(
                    (str(node.args[0].value), str(m.value).lower()) for m in methods.elts if isinstance(m, ast.Constant)
                )
    routes.update((path, "get") for path in docs.values() if path)
    assert ("/predict", "post") in routes, f"could not read the app's routes from {API_SOURCE}"
    return routes


def api_body(resources: dict[str, Any]) -> dict[str, Any]:
    return only(resources, "AWS::ApiGateway::RestApi")["Properties"]["Body"]


def operations(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, item in body["paths"].items() for method, op in item.items()}


# ---------------------------------------------------------------- API routes, key, limits


def test_every_app_route_is_routed_to_the_live_alias(default_deploy: dict[str, Any]) -> None:
    resources = default_deploy["Resources"]
    ops = operations(api_body(resources))
    assert set(ops) == app_routes()
    alias = next(iter(of_type(resources, "AWS::Lambda::Alias")))
    for (path, method), op in ops.items():
        integration = op["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy", (path, method)
        assert integration["httpMethod"] == "POST", (path, method)
        assert refs(integration["uri"]) == {alias}, f"{method} {path} must invoke the published alias"


DOCS_PAGES = {"Docs": "/docs", "Redoc": "/redoc"}


def without_docs_pages(template: dict[str, Any], *, events_only: bool = False) -> dict[str, Any]:
    """The template after the README's recipe for a stack that loads nothing from outside: the ``Docs`` and ``Redoc``
    events, their paths in the API's ``DefinitionBody`` and their stage ``MethodSettings`` removed."""
    changed = copy.deepcopy(template)
    function = changed["Resources"]["InferenceFunction"]["Properties"]
    api = changed["Resources"]["InferenceApi"]["Properties"]
    for event, path in DOCS_PAGES.items():
        del function["Events"][event]
        if not events_only:
            del api["DefinitionBody"]["paths"][path]
            api["MethodSettings"] = [
                s for s in api["MethodSettings"] if s["ResourcePath"] != "/" + path.replace("/", "~1")
            ]
    return changed


def deployable_api_problems(resources: dict[str, Any]) -> list[str]:
    """What API Gateway would refuse at deploy: a method with no integration, a method setting for no method."""
    body = api_body(resources)
    problems = [
        f"{m.upper()} {p} has no integration"
        for (p, m), op in operations(body).items()
        if "x-amazon-apigateway-integration" not in op
    ]
    stage = only(resources, "AWS::ApiGateway::Stage")["Properties"]
    for setting in stage["MethodSettings"]:
        path, method = "/" + setting["ResourcePath"].replace("~1", "/").lstrip("/"), setting["HttpMethod"].lower()
        if setting["ResourcePath"] != "/*" and method not in body["paths"].get(path, {}):
            problems.append(f"MethodSettings name {method.upper()} {path}, which the API does not have")
    return problems


def test_the_default_api_is_deployable(default_deploy: dict[str, Any]) -> None:
    assert deployable_api_problems(default_deploy["Resources"]) == []


def test_the_readme_recipe_for_an_api_without_docs_pages_deploys(template: dict[str, Any]) -> None:
    resources = deployed(without_docs_pages(template))["Resources"]
    assert deployable_api_problems(resources) == []
    assert set(operations(api_body(resources))) == app_routes() - {(path, "get") for path in DOCS_PAGES.values()}
    # Why the recipe names all three places: the events alone leave routes API Gateway refuses to deploy.
    events_only = deployed(without_docs_pages(template, events_only=True))["Resources"]
    assert "GET /docs has no integration" in deployable_api_problems(events_only)
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "the `Docs` and `Redoc` events, their paths under `DefinitionBody`, and their two `MethodSettings`" in readme


def test_each_route_has_a_lambda_permission_scoped_to_its_method_and_path(default_deploy: dict[str, Any]) -> None:
    resources = default_deploy["Resources"]
    permissions = of_type(resources, "AWS::Lambda::Permission")
    scoped = set()
    for permission in permissions.values():
        props = permission["Properties"]
        assert props["Principal"] == "apigateway.amazonaws.com"
        assert props["Action"] == "lambda:InvokeFunction"
        template, variables = props["SourceArn"]["Fn::Sub"]
        assert variables["__ApiId__"] == {"Ref": "InferenceApi"}
        method, path = template.split("${__Stage__}/", 1)[1].split("/", 1)
        scoped.add(("/" + path, method.lower()))
    assert scoped == set(operations(api_body(resources)))


@pytest.mark.parametrize(
    ("api_key_required", "keyed"),
    [("true", KEYED_ROUTES), ("false", set())],
    ids=["key-required", "key-not-required"],
)
def test_api_key_guards_predict_and_model_only(template: dict[str, Any], api_key_required: str, keyed: set) -> None:
    resources = deployed(template, {"ApiKeyRequired": api_key_required})["Resources"]
    body = api_body(resources)
    scheme = body["components"]["securitySchemes"]["api_key"]
    assert scheme == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    for route, op in operations(body).items():
        expected: list[dict[str, list[str]]] = [{"api_key": []}] if route in keyed else []
        assert op["security"] == expected, route


def test_usage_plan_throttles_and_caps_the_key_on_the_stage(template: dict[str, Any]) -> None:
    overrides = {"ThrottleRateLimit": 7, "ThrottleBurstLimit": 11, "DailyQuota": 1234}
    resources = deployed(template, overrides)["Resources"]
    plan_id, plan = next(iter(of_type(resources, "AWS::ApiGateway::UsagePlan").items()))
    props = plan["Properties"]
    assert props["Throttle"] == {"RateLimit": "7", "BurstLimit": "11"}
    assert props["Quota"] == {"Limit": "1234", "Period": "DAY"}
    stage_id = next(iter(of_type(resources, "AWS::ApiGateway::Stage")))
    assert props["ApiStages"] == [{"ApiId": {"Ref": "InferenceApi"}, "Stage": {"Ref": stage_id}}]
    key_id, key = next(iter(of_type(resources, "AWS::ApiGateway::ApiKey").items()))
    assert key["Properties"]["Enabled"] is True
    link = only(resources, "AWS::ApiGateway::UsagePlanKey")["Properties"]
    assert link == {"KeyId": {"Ref": key_id}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": plan_id}}


def test_stage_throttles_traces_and_logs_access_without_bodies(template: dict[str, Any]) -> None:
    overrides = {"ThrottleRateLimit": 3, "ThrottleBurstLimit": 5, "StageName": "v1"}
    resources = deployed(template, {**overrides, "PublicThrottleRateLimit": 1, "PublicThrottleBurstLimit": 2})[
        "Resources"
    ]
    stage = only(resources, "AWS::ApiGateway::Stage")["Properties"]
    assert stage["StageName"] == "v1"
    assert stage["TracingEnabled"] is True
    setting, *public = stage["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert (setting["ThrottlingRateLimit"], setting["ThrottlingBurstLimit"]) == ("3", "5")
    # Every keyless route has a lower limit of its own: each method is throttled apart, outside any quota.
    events = template["Resources"]["InferenceFunction"]["Properties"]["Events"].values()
    keyless = {(e["Properties"]["Path"], e["Properties"]["Method"].upper()) for e in events}
    keyless -= {("/predict", "POST"), ("/model", "GET")}
    assert {(s["ResourcePath"].replace("~1", "/").replace("//", "/"), s["HttpMethod"]) for s in public} == keyless
    for s in [setting, *public]:
        assert s["DataTraceEnabled"] is False, "bodies are eye photos: never log them"
        # Per-method metrics are billed as custom metrics; the alarms read the free API-and-stage ones.
        assert s["MetricsEnabled"] is False and s["LoggingLevel"] == "ERROR"
    assert all((s["ThrottlingRateLimit"], s["ThrottlingBurstLimit"]) == ("1", "2") for s in public)
    access = stage["AccessLogSetting"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    fields = json.loads(access["Format"])
    assert {"requestId", "status", "ip", "responseLatency", "apiKeyId"} <= set(fields)
    # Each row must parse once API Gateway fills it in; *String variables arrive already quoted.
    row = re.sub(r"\$context\.[A-Za-z.]+String", '"quoted"', access["Format"])
    row = re.sub(r"\$context\.[A-Za-z.]+", "Forbidden", row)
    assert json.loads(row)["errorMessage"] == "Forbidden"


def test_stage_name_is_the_url_path_and_no_extra_stage_is_made(template: dict[str, Any]) -> None:
    result = deployed(template, {"StageName": "v1"})
    assert len(of_type(result["Resources"], "AWS::ApiGateway::Stage")) == 1
    deployment = only(result["Resources"], "AWS::ApiGateway::Deployment")["Properties"]
    assert "StageName" not in deployment, "SAM's implicit 'Stage' stage must not exist"
    url = result["Outputs"]["ApiUrl"]["Value"]["Fn::Sub"]
    assert "${StageName}" not in url
    assert url.endswith("/v1/") and url.startswith("https://${InferenceApi}.execute-api.")


def test_binary_media_types_cover_raw_images_but_not_json(default_deploy: dict[str, Any]) -> None:
    body = api_body(default_deploy["Resources"])
    types = set(body["x-amazon-apigateway-binary-media-types"])
    # Every image type the app decodes: API Gateway mangles a binary body whose type is not listed.
    assert {"image/*", "application/octet-stream"} <= types
    assert not types & {"*/*", "application/json", "application/*", "text/html"}
    # `sam local start-api` matches exactly (no wildcards): each type a raw upload of a decodable format may carry.
    exact = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
    assert exact <= types, exact - types
    # And of what the app refuses with advice (an iPhone's HEIC), or curl sends by default (-d, -F): SAM's emulator
    # decoded their bytes as text and answered its own 502, not the app's 415.
    refused = {"image/heic", "image/heif", "image/avif", "application/x-www-form-urlencoded", "multipart/form-data"}
    assert refused <= types, refused - types


def test_sam_local_start_api_hands_the_app_every_upload_it_answers(template: dict[str, Any]) -> None:
    """Built by SAM CLI's own code from the template's types: an upload SAM cannot read as text must be binary."""
    binary = template["Resources"]["InferenceApi"]["Properties"]["BinaryMediaTypes"]
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic\xff\xd8\xff"  # not UTF-8
    uploads = ["image/jpeg", "image/heic", "image/avif", "image/x-ms-bmp", "application/x-www-form-urlencoded"]
    built = sam_local_events(binary, [*uploads, "multipart/form-data; boundary=x"], heic)
    assert len(built) == len(uploads) + 1
    for content_type, event in zip([*uploads, "multipart/form-data"], built, strict=True):
        # Not SAM's UnicodeDecodeError (its 502): the bytes, base64-encoded, for the app to refuse with its 415.
        assert isinstance(event, dict) and event["isBase64Encoded"], (content_type, event)
        assert base64.b64decode(event["body"]) == heic


@pytest.mark.parametrize(
    ("response_type", "status"),
    [
        ("INVALID_API_KEY", "403"),
        ("MISSING_AUTHENTICATION_TOKEN", "404"),  # what API Gateway answers for a path it does not route
        ("THROTTLED", "429"),
        ("QUOTA_EXCEEDED", "429"),
        ("REQUEST_TOO_LARGE", "413"),
        ("INTEGRATION_TIMEOUT", "504"),
        ("DEFAULT_4XX", None),
        ("DEFAULT_5XX", None),
    ],
)
def test_gateway_errors_use_the_apps_error_shape(
    default_deploy: dict[str, Any], response_type: str, status: str
) -> None:
    response = api_body(default_deploy["Resources"])["x-amazon-apigateway-gateway-responses"][response_type]
    assert response.get("statusCode") == status
    # API Gateway renders $context.error.messageString as a quoted JSON string.
    rendered = response["responseTemplates"]["application/json"].replace("$context.error.messageString", '"Forbidden"')
    body = json.loads(rendered.replace("$context.requestId", "c0ffee-1"))
    assert set(body) == {"error", "request_id", "disclaimer"}
    assert body["request_id"] == "c0ffee-1", "the id a support ticket can quote, as on the app's own errors"
    assert set(body["error"]) == {"code", "message"}
    assert re.fullmatch(r"[a-z_]+", body["error"]["code"])
    # The same shape and words as the function's own errors: every response says it is not a diagnosis.
    assert ErrorResponse.model_validate(body).disclaimer == DEFAULT_DISCLAIMER
    # And the same headers as the function's own errors (no id header: API Gateway sends x-amzn-RequestId).
    _, app_headers = error_content("any", "any", None, DEFAULT_DISCLAIMER)
    prefix = "gatewayresponse.header."
    params = response.get("responseParameters", {})
    assert all(key.startswith(prefix) for key in params), params
    assert {key[len(prefix) :]: value for key, value in params.items()} == {
        name: f"'{value}'" for name, value in app_headers.items()
    }


# ---------------------------------------------------------------- model bucket


@pytest.fixture(scope="module")
def bucket(default_deploy: dict[str, Any]) -> dict[str, Any]:
    return only(default_deploy["Resources"], "AWS::S3::Bucket")


def test_bucket_is_encrypted_versioned_and_private(bucket: dict[str, Any]) -> None:
    props = bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"aws:kms", "AES256"}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"], True
    )
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert "BucketName" not in props, "the name comes from the stack, so two stacks never collide"
    assert bucket["DeletionPolicy"] == "Retain"


def test_bucket_expires_only_old_versions(template: dict[str, Any]) -> None:
    resources = deployed(template, {"ModelNoncurrentVersionDays": 45})["Resources"]
    rules = only(resources, "AWS::S3::Bucket")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert all(rule["Status"] == "Enabled" for rule in rules)
    for rule in rules:
        assert "ExpirationInDays" not in rule and "Expiration" not in rule, "current model versions must stay"
    noncurrent = [r["NoncurrentVersionExpiration"] for r in rules if "NoncurrentVersionExpiration" in r]
    assert noncurrent == [{"NoncurrentDays": "45", "NewerNoncurrentVersions": 3}]


def test_bucket_policy_refuses_plain_http(default_deploy: dict[str, Any]) -> None:
    policy = only(default_deploy["Resources"], "AWS::S3::BucketPolicy")["Properties"]
    assert policy["Bucket"] == {"Ref": "ModelBucket"}
    statements = policy["PolicyDocument"]["Statement"]
    tls = [s for s in statements if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(tls) == 1
    (deny,) = tls
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert {"Fn::GetAtt": ["ModelBucket", "Arn"]} in deny["Resource"]
    assert {"Fn::Sub": "${ModelBucket.Arn}/*"} in deny["Resource"]
    assert all(s["Effect"] == "Deny" for s in statements), "the bucket policy grants nothing"


# ---------------------------------------------------------------- IAM


def statements_of(resource: dict[str, Any]) -> list[dict[str, Any]]:
    props = resource["Properties"]
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
    if "PolicyDocument" in props:
        docs.append(props["PolicyDocument"])
    return [s for doc in docs for s in doc["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# Actions that AWS authorises only against "*": no resource-level permissions exist for them.
RESOURCE_STAR_ALLOWED = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:DescribeAlarms"}


@pytest.mark.parametrize("logs_role", ["false", "true"])
def test_iam_grants_no_wildcards_beyond_what_aws_requires(template: dict[str, Any], logs_role: str) -> None:
    resources = deployed(template, {"CreateApiGatewayLogsRole": logs_role})["Resources"]
    principals = [*of_type(resources, "AWS::IAM::Role").values(), *of_type(resources, "AWS::IAM::Policy").values()]
    assert principals
    for resource in principals:
        for arn in resource["Properties"].get("ManagedPolicyArns", []):
            text = arn["Fn::Sub"] if isinstance(arn, dict) else arn
            assert isinstance(text, str) and text.startswith("arn:"), f"managed policy must be a full ARN: {arn}"
        for statement in statements_of(resource):
            assert statement["Effect"] == "Allow"
            actions = as_list(statement["Action"])
            assert all("*" not in action for action in actions), actions
            for res in as_list(statement["Resource"]):
                if res == "*":
                    assert set(actions) <= RESOURCE_STAR_ALLOWED, f"{actions} on '*'"
                else:
                    text = res["Fn::Sub"] if isinstance(res, dict) and "Fn::Sub" in res else json.dumps(res)
                    assert "*" not in text.rstrip("*").rstrip(":/"), f"wildcard inside {text}"


# Lambda's own samples guard an execution role with aws:SourceAccount. CodeDeploy and API Gateway are not documented
# to send that key when they assume a role: a condition on it could fail every deployment (or ApiGatewayAccount),
# which nothing here can check before a real deploy.
TRUST_CONDITION_BY_SERVICE = {
    "lambda.amazonaws.com": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
    "codedeploy.amazonaws.com": None,
    "apigateway.amazonaws.com": None,
}


def test_each_role_trusts_one_service_with_a_condition_that_service_meets(template: dict[str, Any]) -> None:
    resources = deployed(template, {"CreateApiGatewayLogsRole": "true"})["Resources"]
    roles = of_type(resources, "AWS::IAM::Role")
    seen = set()
    for name, role in roles.items():
        (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        service = statement["Principal"]["Service"]
        assert service in TRUST_CONDITION_BY_SERVICE, f"{name} trusts {service}: which trust condition does it meet?"
        assert statement.get("Condition") == TRUST_CONDITION_BY_SERVICE[service], name
        seen.add(service)
    assert seen == set(TRUST_CONDITION_BY_SERVICE)


def test_function_reads_only_the_model_prefix(template: dict[str, Any]) -> None:
    resources = deployed(template, {"ModelS3Prefix": "models/eyes"})["Resources"]
    role = resources["InferenceFunctionRole"]
    s3 = [s for s in statements_of(role) if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert len(s3) == 1
    assert sorted(as_list(s3[0]["Action"])) == ["s3:GetObject", "s3:GetObjectVersion"]
    assert s3[0]["Resource"] == {"Fn::Sub": "${ModelBucket.Arn}/models/eyes/*"}
    granted = {a for s in statements_of(role) for a in as_list(s["Action"])}
    assert granted == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "s3:GetObject",
        "s3:GetObjectVersion",
    }
    assert not role["Properties"].get("ManagedPolicyArns")
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}]


def test_function_writes_only_its_own_log_group(default_deploy: dict[str, Any]) -> None:
    resources = default_deploy["Resources"]
    role = resources["InferenceFunctionRole"]
    logs = [s for s in statements_of(role) if any(a.startswith("logs:") for a in as_list(s["Action"]))]
    assert [refs(s["Resource"]) for s in logs] == [{"FunctionLogGroup"}]
    function = resources["InferenceFunction"]["Properties"]
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}


# ---------------------------------------------------------------- function


@pytest.fixture(scope="module")
def function(default_deploy: dict[str, Any]) -> dict[str, Any]:
    return default_deploy["Resources"]["InferenceFunction"]


def test_function_is_an_image_built_from_the_inference_context(template: dict[str, Any], function: dict) -> None:
    source = template["Resources"]["InferenceFunction"]
    metadata = source["Metadata"]
    context = REPO / metadata["DockerContext"]
    assert (context / metadata["Dockerfile"]).is_file()
    assert metadata["DockerTag"]
    assert "ImageUri" not in source["Properties"], "sam build fills ImageUri; a fixed one would skip the build"
    assert function["Properties"]["PackageType"] == "Image"


def test_function_timeout_fits_api_gateway_and_memory_is_bounded(template: dict[str, Any], function: dict) -> None:
    props = function["Properties"]
    assert 1 <= props["Timeout"] < API_GATEWAY_TIMEOUT_S + 1
    memory = template["Parameters"]["MemorySize"]
    assert props["MemorySize"] == str(memory["Default"])
    assert 1769 <= memory["Default"] <= 3008, "about 2 GB: a full vCPU without paying for idle memory"
    assert 128 <= memory["MinValue"] <= memory["Default"] <= memory["MaxValue"] <= 10240


def test_function_traces_and_publishes_a_live_alias(default_deploy: dict[str, Any], function: dict) -> None:
    assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}
    alias = only(default_deploy["Resources"], "AWS::Lambda::Alias")["Properties"]
    assert alias["Name"] == "live"
    ((version_id, version),) = of_type(default_deploy["Resources"], "AWS::Lambda::Version").items()
    assert alias["FunctionVersion"] == {"Fn::GetAtt": [version_id, "Version"]}
    # A parameter-only deploy replaces the version: the one the alias leaves must stay, to roll back to.
    assert version["DeletionPolicy"] == "Retain" and version["UpdateReplacePolicy"] == "Retain"
    assert "ProvisionedConcurrencyConfig" not in alias, "provisioned concurrency is opt-in (it bills while idle)"


def test_the_alias_moves_only_after_the_deploy_check_passes(default_deploy: dict[str, Any]) -> None:
    """CodeDeploy shifts the live alias, and only after DeployCheckFunction has called the new version."""
    resources = default_deploy["Resources"]
    alias = only(resources, "AWS::Lambda::Alias")
    ((version_id, _),) = of_type(resources, "AWS::Lambda::Version").items()
    update = alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    assert update["BeforeAllowTrafficHook"] == {"Ref": "DeployCheckFunction"}
    group = resources[update["DeploymentGroupName"]["Ref"]]["Properties"]
    assert group["ServiceRoleArn"] == {"Fn::GetAtt": ["CodeDeployRole", "Arn"]}
    assert "DEPLOYMENT_FAILURE" in group["AutoRollbackConfiguration"]["Events"]
    # No alarms gate the deployment: one still in alarm from the old version would block the fix for it.
    assert "AlarmConfiguration" not in group

    check = resources["DeployCheckFunction"]["Properties"]
    assert check["Environment"]["Variables"] == {"TARGET_VERSION_ARN": {"Ref": version_id}}
    module, attribute = check["Handler"].split(".")
    assert (REPO / "functions" / "deploy_check" / f"{module}.py").is_file() and attribute == "handler"
    assert check["Runtime"] == "python3.12" and int(check["Timeout"]) >= 2 * 28 + 60

    granted = {a: s["Resource"] for s in statements_of(resources["DeployCheckRole"]) for a in as_list(s["Action"])}
    assert granted["lambda:InvokeFunction"] == {"Fn::Sub": "${InferenceFunction.Arn}:*"}  # qualified ARNs only
    assert granted["lambda:GetFunctionConfiguration"] == granted["lambda:InvokeFunction"]
    assert (
        "${ServerlessDeploymentApplication}/*" in granted["codedeploy:PutLifecycleEventHookExecutionStatus"]["Fn::Sub"]
    )
    deployer = statements_of(resources["CodeDeployRole"])
    invoke = [s for s in deployer if "lambda:InvokeFunction" in as_list(s["Action"])]
    assert [s["Resource"] for s in invoke] == [{"Fn::GetAtt": ["DeployCheckFunction", "Arn"]}]
    trust = resources["CodeDeployRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "codedeploy.amazonaws.com"}]


def test_a_parameter_only_change_publishes_a_new_version(template: dict[str, Any]) -> None:
    """Everything the function's configuration takes from a parameter also reaches the version's description,
    whose change replaces the version (a new one is published and the alias moves)."""
    source = template["Resources"]["InferenceFunction"]["Properties"]
    configured = refs({k: source[k] for k in ("Environment", "MemorySize")})
    assert {"ModelS3Uri", "ModelSha256", "ModelManifestSha256", "MemorySize", "LogLevel"} <= configured
    # A pinned S3 version id comes with its sha256 (a rule), which stands for it in the description.
    assert configured - {"ModelS3VersionId"} <= refs(source["VersionDescription"])
    baseline = only(deployed(template)["Resources"], "AWS::Lambda::Version")["Properties"]["Description"]
    changes = {"ModelS3Uri": "s3://b/models/cataract/v9/", "ModelSha256": "e" * 64, "ModelManifestSha256": "d" * 64,
               "MemorySize": "3008", "OrtIntraOpThreads": "2", "LogLevel": "DEBUG"}  # fmt: skip
    for name, value in changes.items():
        version = only(deployed(template, {name: value})["Resources"], "AWS::Lambda::Version")["Properties"]
        assert version["Description"] != baseline, name


def test_version_description_fits_lambdas_256_characters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    longest = {
        "ModelS3Uri": "s3://" + "b" * 63 + "/" + "k" * (params["ModelS3Uri"]["MaxLength"] - 69),
        "ModelSha256": "f" * 64,
        "ModelManifestSha256": "e" * 64,
        "ModelS3VersionId": "v" * params["ModelS3VersionId"]["MaxLength"],  # not in the description
        "MemorySize": str(params["MemorySize"]["MaxValue"]),
        "OrtIntraOpThreads": str(params["OrtIntraOpThreads"]["MaxValue"]),
        "LogLevel": max(params["LogLevel"]["AllowedValues"], key=len),
    }
    assert re.fullmatch(params["ModelS3Uri"]["AllowedPattern"], longest["ModelS3Uri"])
    version = only(deployed(template, longest)["Resources"], "AWS::Lambda::Version")["Properties"]
    assert len(version["Description"]["Fn::Sub"]) <= 256


@pytest.mark.parametrize("architecture", ["x86_64", "arm64"])
def test_architecture_parameter_reaches_the_function(template: dict[str, Any], architecture: str) -> None:
    resources = deployed(template, {"Architecture": architecture})["Resources"]
    assert resources["InferenceFunction"]["Properties"]["Architectures"] == [architecture]


def test_provisioned_and_reserved_concurrency_are_opt_in(template: dict[str, Any]) -> None:
    resources = deployed(template, {"ProvisionedConcurrency": 2, "ReservedConcurrency": 5})["Resources"]
    alias = only(resources, "AWS::Lambda::Alias")["Properties"]
    assert alias["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": "2"}
    assert resources["InferenceFunction"]["Properties"]["ReservedConcurrentExecutions"] == "5"


def test_default_environment_uses_the_baked_model(function: dict[str, Any]) -> None:
    env = function["Properties"]["Environment"]["Variables"]
    # Per stack: samconfig's dev and prod may share an account and region, and must not share metrics or alarms.
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "CataractScreening"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert env["POWERTOOLS_LOGGER_LOG_EVENT"] == "false"
    assert env["MODEL_CACHE_DIR"].startswith("/tmp/")
    assert int(env["ORT_INTRA_OP_THREADS"]) >= 1
    assert not {"MODEL_S3_URI", "MODEL_SHA256", "MODEL_MANIFEST_SHA256", "MODEL_S3_VERSION_ID"} & set(env)


def test_model_parameters_reach_the_environment(template: dict[str, Any]) -> None:
    overrides = {
        "ModelS3Uri": "s3://my-models/models/cataract/2026-11-27/",
        "ModelSha256": "ab" * 32,
        "ModelManifestSha256": "cd" * 32,
        "ModelS3VersionId": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
        "LogLevel": "DEBUG",
        "OrtIntraOpThreads": 2,
    }
    resources = deployed(template, overrides)["Resources"]
    env = resources["InferenceFunction"]["Properties"]["Environment"]["Variables"]
    assert env["MODEL_S3_URI"] == overrides["ModelS3Uri"]
    assert env["MODEL_SHA256"] == overrides["ModelSha256"]
    assert env["MODEL_MANIFEST_SHA256"] == overrides["ModelManifestSha256"]
    assert env["MODEL_S3_VERSION_ID"] == overrides["ModelS3VersionId"]
    assert env["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
    assert env["ORT_INTRA_OP_THREADS"] == "2"


@pytest.mark.parametrize(
    ("parameter", "value", "ok"),
    [
        ("ModelS3Uri", "", True),
        ("ModelS3Uri", "s3://my-models/models/cataract/v3/", True),
        ("ModelS3Uri", "s3://my-models/models/cataract/v3/model.onnx", True),
        ("ModelS3Uri", "https://my-models.s3.amazonaws.com/model.onnx", False),
        ("ModelS3Uri", "s3://my-models", False),
        ("ModelSha256", "", True),
        ("ModelSha256", "0123456789abcdef" * 4, True),
        ("ModelSha256", "0123456789abcdef" * 4 + "0", False),
        ("ModelSha256", "0123456789ABCDEF" * 4, False),
        ("AlarmEmail", "", True),
        ("AlarmEmail", "oncall@example.org", True),
        ("AlarmEmail", "not-an-address", False),
        ("StageName", "Prod", True),
        ("StageName", "prod/v1", False),
        ("ModelS3Prefix", "models/cataract", True),
        ("ModelS3Prefix", "/models/cataract/", False),
    ],
)
def test_parameter_patterns(template: dict[str, Any], parameter: str, value: str, ok: bool) -> None:
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is ok


def test_model_checksum_needs_a_model_uri_rule(cfn: dict[str, Any]) -> None:
    rule = cfn["Rules"]["Sha256NeedsS3Uri"]  # survives the transform, so CloudFormation enforces it
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ModelSha256"}, ""]}]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ModelS3Uri"}, ""]}]}


# ---------------------------------------------------------------- logs, alarms, outputs


def test_every_log_group_has_the_retention_parameter(template: dict[str, Any]) -> None:
    resources = deployed(template, {"LogRetentionDays": 14})["Resources"]
    groups = of_type(resources, "AWS::Logs::LogGroup")
    assert {"FunctionLogGroup", "ApiAccessLogGroup", "ApiExecutionLogGroup"} <= set(groups)
    assert {name: g["Properties"]["RetentionInDays"] for name, g in groups.items()} == dict.fromkeys(groups, "14")


def test_execution_log_group_matches_the_name_api_gateway_writes_to(default_deploy: dict[str, Any]) -> None:
    name = default_deploy["Resources"]["ApiExecutionLogGroup"]["Properties"]["LogGroupName"]
    assert name == {"Fn::Sub": "API-Gateway-Execution-Logs_${InferenceApi}/Prod"}


ALARMED_METRICS = {
    ("AWS/ApiGateway", "5XXError", "Sum"),
    ("AWS/ApiGateway", "Latency", "p99"),
    ("AWS/Lambda", "Errors", "Sum"),
    ("AWS/Lambda", "Throttles", "Sum"),
    ("CataractScreening", "ServerError", "Sum"),
}


def test_alarms_watch_5xx_latency_errors_throttles_and_our_500s(default_deploy: dict[str, Any]) -> None:
    resources = default_deploy["Resources"]
    alarms = [a["Properties"] for a in of_type(resources, "AWS::CloudWatch::Alarm").values()]
    watched = {(a["Namespace"], a["MetricName"], a.get("Statistic") or a.get("ExtendedStatistic")) for a in alarms}
    assert watched >= ALARMED_METRICS
    api_name = only(resources, "AWS::ApiGateway::RestApi")["Properties"]["Name"]
    topic = next(iter(of_type(resources, "AWS::SNS::Topic")))
    for alarm in alarms:
        assert alarm["AlarmActions"] == [{"Ref": topic}]
        dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        if alarm["Namespace"] == "AWS/ApiGateway":
            assert dims == {"ApiName": api_name, "Stage": "Prod"}, "API metrics are keyed by the API's name"
        elif alarm["Namespace"] == "AWS/Lambda":
            assert dims == {"FunctionName": {"Ref": "InferenceFunction"}}
        else:
            # Our EMF metrics: the namespace and the one dimension the function's Powertools writes.
            env = resources["InferenceFunction"]["Properties"]["Environment"]["Variables"]
            assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
            assert dims == {"service": env["POWERTOOLS_SERVICE_NAME"]}
            assert alarm["Threshold"] == 1, "one internal error is a bug worth knowing about"


@pytest.mark.parametrize(("email", "subscribed"), [("", False), ("oncall@example.org", True)])
def test_alarm_email_is_optional(template: dict[str, Any], email: str, subscribed: bool) -> None:
    resources = deployed(template, {"AlarmEmail": email})["Resources"]
    subscriptions = of_type(resources, "AWS::SNS::Subscription")
    assert bool(subscriptions) is subscribed
    if subscribed:
        (sub,) = subscriptions.values()
        assert sub["Properties"]["Endpoint"] == email and sub["Properties"]["Protocol"] == "email"


@pytest.mark.parametrize(("create", "count"), [("false", 0), ("true", 1)])
def test_api_gateway_logs_role_is_opt_in(template: dict[str, Any], create: str, count: int) -> None:
    resources = deployed(template, {"CreateApiGatewayLogsRole": create})["Resources"]
    accounts = of_type(resources, "AWS::ApiGateway::Account")
    assert len(accounts) == count
    api = only(resources, "AWS::ApiGateway::RestApi")
    assert api["DependsOn"] == "ApiGatewayLogsRoleReady"
    ready = resources["ApiGatewayLogsRoleReady"]["Metadata"]["AccountSetting"]
    assert (ready == {"Ref": "ApiGatewayAccount"}) is (count == 1)


def test_outputs_name_everything_a_user_needs(default_deploy: dict[str, Any]) -> None:
    outputs = default_deploy["Outputs"]
    assert {"ApiUrl", "ApiKeyId", "UsagePlanId", "FunctionName", "FunctionAliasArn", "ModelBucketName"} <= set(outputs)
    resources = default_deploy["Resources"]
    assert refs(outputs["ApiKeyId"]["Value"]) <= set(of_type(resources, "AWS::ApiGateway::ApiKey"))
    assert refs(outputs["FunctionAliasArn"]["Value"]) <= set(of_type(resources, "AWS::Lambda::Alias"))
    assert outputs["FunctionName"]["Value"] == {"Ref": "InferenceFunction"}
    assert outputs["ModelBucketName"]["Value"] == {"Ref": "ModelBucket"}
    for name, output in outputs.items():
        assert refs(output["Value"]) <= set(resources), f"output {name} names something that does not exist"


def test_every_parameter_is_used_and_described(template: dict[str, Any]) -> None:
    used = refs(template["Resources"]) | refs(template.get("Conditions", {})) | refs(template["Outputs"])
    for name, spec in template["Parameters"].items():
        assert name in used, f"parameter {name} is never used"
        assert len(spec.get("Description", "")) > 20, f"parameter {name} needs a description for --guided"
    defaults = parameter_values(template)
    assert defaults["ApiKeyRequired"] == "true" and defaults["ProvisionedConcurrency"] == "0"


def test_template_names_no_account_region_or_bucket(template: dict[str, Any]) -> None:
    text = Path(REPO / "template.yaml").read_text()
    assert not re.search(r"\b\d{12}\b", text), "no account ids"
    assert not re.search(r"\b(us|eu|ap|sa|ca|me|af)-(east|west|north|south|central|northeast|southeast)-\d\b", text)
    assert not re.search(r"^\s+BucketName:", text, re.MULTILINE), "bucket names come from the stack"


def broken_rules(template: dict[str, Any], overrides: dict[str, str]) -> set[str]:
    """The template Rules a deploy with ``overrides`` would fail, as CloudFormation checks them before any change."""
    params = parameter_values(template, overrides)
    broken = set()
    for name, rule in template["Rules"].items():
        if "RuleCondition" in rule and not resolve(rule["RuleCondition"], template, params):
            continue
        if not all(resolve(assertion["Assert"], template, params) for assertion in rule["Assertions"]):
            broken.add(name)
    return broken


URI, SHA, MSHA = "s3://bucket-abc/models/cataract/v1/", "a" * 64, "b" * 64
# The version id S3's documentation gives as an example: 64 characters, with "+".
LONG_VERSION_ID = "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo"


@pytest.mark.parametrize(
    ("overrides", "broken"),
    [
        ({}, set()),
        ({"ModelS3Uri": URI, "ModelSha256": SHA, "ModelManifestSha256": MSHA}, set()),
        (
            {"ModelS3Uri": URI, "ModelSha256": SHA, "ModelManifestSha256": MSHA, "ModelS3VersionId": LONG_VERSION_ID},
            set(),
        ),
        # Unpinned, or half pinned: whoever can write to the bucket could change what is served.
        ({"ModelS3Uri": URI}, {"S3ModelNeedsBothSha256"}),
        ({"ModelS3Uri": URI, "ModelSha256": SHA}, {"S3ModelNeedsBothSha256"}),
        ({"ModelS3Uri": URI, "ModelManifestSha256": MSHA}, {"S3ModelNeedsBothSha256"}),
        ({"ModelSha256": SHA}, {"Sha256NeedsS3Uri"}),
        ({"ModelManifestSha256": MSHA}, {"ManifestSha256NeedsS3Uri"}),
        ({"ModelS3VersionId": "abc"}, {"VersionIdNeedsS3Uri", "VersionIdNeedsSha256"}),
        (
            {"ModelS3Uri": URI, "ModelManifestSha256": MSHA, "ModelS3VersionId": "abc"},
            {"VersionIdNeedsSha256", "S3ModelNeedsBothSha256"},
        ),
    ],
    ids=[
        "baked",
        "s3-pinned",
        "s3-pinned-version",
        "s3-unpinned",
        "s3-model-only",
        "s3-manifest-only",
        "sha-alone",
        "manifest-sha-alone",
        "version-alone",
        "version-without-sha",
    ],
)
def test_rules_refuse_model_settings_that_cannot_work(template: dict[str, Any], overrides: dict, broken: set) -> None:
    assert broken_rules(template, overrides) == broken


@pytest.mark.parametrize(
    ("provisioned", "reserved", "refused"),
    [(0, 0, False), (2, 0, False), (0, 5, False), (2, 5, False), (1, 2, False), (2, 2, True), (100, 100, True)],
)
def test_rules_refuse_a_reservation_that_provisioned_concurrency_fills(
    template: dict[str, Any], provisioned: int, reserved: int, refused: bool
) -> None:
    """Equal, the alias's provisioned instances hold the whole reservation: the new version the deploy check calls
    is throttled on every deploy until the check gives up. (More provisioned than reserved, Lambda refuses itself;
    rule functions cannot compare numbers.)"""
    broken = broken_rules(template, {"ProvisionedConcurrency": str(provisioned), "ReservedConcurrency": str(reserved)})
    assert broken == ({"ReservedConcurrencyExceedsProvisioned"} if refused else set())


def test_the_concurrency_rule_survives_the_transform(cfn: dict[str, Any]) -> None:
    rule = cfn["Rules"]["ReservedConcurrencyExceedsProvisioned"]  # so CloudFormation checks it before any change
    assert rule["Assertions"] == [
        {
            "Assert": {
                "Fn::Not": [{"Fn::Equals": [{"Ref": "ProvisionedConcurrency"}, {"Ref": "ReservedConcurrency"}]}]
            },
            "AssertDescription": rule["Assertions"][0]["AssertDescription"],
        }
    ]
    assert "ReservedConcurrency must exceed ProvisionedConcurrency" in rule["Assertions"][0]["AssertDescription"]


def test_s3_version_ids_as_s3_issues_them_are_accepted(template: dict[str, Any]) -> None:
    spec = template["Parameters"]["ModelS3VersionId"]
    for version_id in (LONG_VERSION_ID, "Lx9wqWXT3Lbj.Txvy0cq7l1BCdStOlUZ", "null"):
        assert re.fullmatch(spec["AllowedPattern"], version_id) and len(version_id) <= spec["MaxLength"]
