"""Where the model comes from: the baked-in folder, or S3 verified by sha256 and cached in /tmp.

Whatever the source, the bytes of ``model.onnx`` are hashed and must match the manifest (and
``MODEL_SHA256`` when set) before a session is ever built, and the session is built from those very
bytes, not by reopening a path: the function never serves an unverified model. From S3, ``model.json``
must also be the one published with the model (its hash is in ``model.onnx``'s object metadata).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .manifest import MANIFEST_FILENAME, MODEL_FILENAME, Manifest, ManifestError, load_manifest, parse_manifest
from .settings import Settings

_CHUNK = 1024 * 1024
# Lambda gives init 10 s. S3 in the same region delivers a 10 MB model in well under a second; a stalled
# connection must fail init with our message while there is time to report it, not run into the limit.
S3_DEADLINE_S = 6.0


class ModelLoadError(RuntimeError):
    """The model could not be obtained or verified. The message says what to do."""


@dataclass(frozen=True)
class ModelArtifact:
    """A verified model and its manifest: ``model_bytes`` are the bytes that were hashed."""

    model_path: Path
    manifest: Manifest
    sha256: str
    source: str
    model_bytes: bytes


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key."""
    if not uri.startswith("s3://"):
        raise ModelLoadError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ModelLoadError(f"the S3 URI {uri!r} names no bucket")
    return bucket, key


def _model_and_manifest_keys(key: str) -> tuple[str, str]:
    """Accept a version folder (``…/v1/``, or ``…/v1`` without the slash) or the model itself (``…/v1/model.onnx``)."""
    if key and not key.endswith(".onnx") and not key.endswith("/"):
        key += "/"
    if not key or key.endswith("/"):
        return key + MODEL_FILENAME, key + MANIFEST_FILENAME
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    return key, folder + MANIFEST_FILENAME


def verify(model_path: Path, manifest: Manifest, expected_sha256: str | None, source: str) -> ModelArtifact:
    """Read ``model_path`` once, hash the bytes and check them against the manifest and the pinned checksum."""
    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model file {model_path} ({source}): {exc}") from exc
    return _verified_bytes(data, model_path, manifest, expected_sha256, source)


def _verified_bytes(
    data: bytes,
    model_path: Path,
    manifest: Manifest,
    expected_sha256: str | None,
    source: str,
    *,
    digest: str | None = None,
) -> ModelArtifact:
    """``data`` checked against the manifest and the pin; ``digest``: its sha256, when it was just computed."""
    actual = digest or hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelLoadError(
            f"checksum mismatch for {source}: MODEL_SHA256 is {expected_sha256} but the file hashes to "
            f"{actual}. Refusing to serve an unverified model; pin the sha256 that `publish` printed."
        )
    if actual != manifest.sha256:
        raise ModelLoadError(
            f"checksum mismatch for {source}: the manifest says {manifest.sha256} but model.onnx hashes to "
            f"{actual}. The model and its model.json do not belong together; re-run `pull` or `export`."
        )
    return ModelArtifact(model_path=model_path, manifest=manifest, sha256=actual, source=source, model_bytes=data)


def load_baked(model_dir: Path, expected_sha256: str | None = None) -> ModelArtifact:
    """The model folder baked into the image (or any local folder)."""
    model_path = model_dir / MODEL_FILENAME
    if not model_path.is_file():
        raise ModelLoadError(
            f"no model at {model_path}. Train and export one, `pull` a published version into "
            f"{model_dir}, or set MODEL_S3_URI."
        )
    try:
        manifest = load_manifest(model_dir / MANIFEST_FILENAME)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    return verify(model_path, manifest, expected_sha256, str(model_path))


def _s3_client() -> Any:
    import boto3  # Imported here: only the S3 path pays for it at cold start.
    from botocore.config import Config

    # These bound each try of a GET; S3_DEADLINE_S bounds them all together (_by_deadline).
    return boto3.client(
        "s3", config=Config(retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=3)
    )


def _describe_s3_error(exc: Exception, uri: str) -> str:
    return _specific_s3_error(exc, uri) or f"cannot reach S3 for {uri}: {exc}"


def _specific_s3_error(exc: Exception, uri: str) -> str | None:
    """What botocore's ``exc`` means for reading ``uri``, and what to fix; None when it names nothing specific."""
    from botocore.exceptions import (
        ClientError,
        CredentialRetrievalError,
        InvalidRegionError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        PartialCredentialsError,
        ProfileNotFound,
        SSOError,
        TokenRetrievalError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return f"no AWS credentials to read {uri}; give the function (or your shell) an IAM role or profile"
    # Raised as the client is made or signs: botocore's own words name no setting, and they escaped as a traceback.
    said = str(exc).rstrip(" .:")
    if isinstance(exc, ProfileNotFound):
        return (
            f"cannot read {uri}: {said}. AWS_PROFILE names a profile that is in no AWS config or credentials file: "
            "fix AWS_PROFILE (`aws configure list-profiles`) or unset it"
        )
    if isinstance(exc, CredentialRetrievalError | TokenRetrievalError | SSOError):
        return (
            f"the AWS credentials to read {uri} could not be obtained: {said}. Fix the AWS profile in use "
            "(AWS_PROFILE, or the default one): its credential_process, or `aws sso login` for SSO; or give the "
            "function (or your shell) other credentials"
        )
    if isinstance(exc, InvalidRegionError | NoRegionError):
        return (
            f"cannot read {uri}: {said}. Set AWS_DEFAULT_REGION (or the profile's region) to the bucket's region, "
            "such as us-east-1"
        )
    if isinstance(exc, ParamValidationError):
        return f"S3 cannot be asked for {uri}: {exc}. Check MODEL_S3_URI and MODEL_S3_VERSION_ID."
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        # S3's own words name what our advice cannot know (a KMS key, a policy, the bucket's region); the Lambda
        # runtime logs only this message, not the exception it was raised from.
        said = f" S3 said: {error['Message']}" if error.get("Message") else ""
        if code in ("NoSuchBucket",):
            return f"bucket of {uri} does not exist (check MODEL_S3_URI and the region).{said}"
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
            return (
                f"the bucket of {uri} is in another region ({code}). On Lambda, keep the model in a bucket in the "
                f"function's region; locally, set AWS_DEFAULT_REGION to the bucket's region.{said}"
            )
        if code in ("NoSuchKey", "404", "NotFound"):
            return f"{uri} does not exist (check the version folder; `publish` prints the URI).{said}"
        if code in ("AccessDenied", "403", "Forbidden"):
            return (
                f"access denied to {uri}. Either the object does not exist (the role may not list the bucket, so S3 "
                "answers a missing key with AccessDenied: check the version folder `publish` printed), or the role "
                "lacks s3:GetObject (and s3:GetObjectVersion) on it, or a bucket policy or KMS key refuses it. The "
                "project's template lets the function read only its ModelS3Prefix (models/cataract unless set): "
                f"publish there, or set ModelS3Prefix to where you published.{said}"
            )
        if code in ("NoSuchVersion", "InvalidArgument"):
            return f"{uri}: the object version does not exist ({code}); check MODEL_S3_VERSION_ID.{said}"
        return f"S3 refused {uri}: {code or exc}.{said}"
    return None


def _describe_client_error(exc: Exception, uri: str) -> str:
    """Why no S3 client could be made to read ``uri``: nothing was asked of S3 yet, so never "cannot reach S3"."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not isinstance(exc, BotoCoreError | ClientError):  # boto3 raises a bare ValueError for a malformed endpoint
        return (
            f"cannot make an S3 client to read {uri}: {exc}. Check AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL (a URL "
            "such as https://s3.us-east-1.amazonaws.com) and the profile's endpoint_url, or unset them"
        )
    # Nothing specific (a broken role chain or config file): the configuration, not S3's reach.
    return _specific_s3_error(exc, uri) or (
        f"cannot make an S3 client to read {uri}: {exc}. Check the AWS configuration in use (AWS_PROFILE, "
        "AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE, ~/.aws/config and ~/.aws/credentials)"
    )


_T = TypeVar("_T")


def _by_deadline(work: Callable[[], _T], deadline: float, what: str) -> _T:
    """``work()``'s result, or ``ModelLoadError`` once ``deadline`` (monotonic) passes, whatever ``work`` is doing.

    botocore's timeouts bound each try, not the tries, the retries' back-off and two objects together,
    and a GET stalled before its first byte never reaches the download loop's own check. ``work`` runs
    in a daemon thread: a stalled one is left behind, and the failed init ends the process.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="model-download", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        raise ModelLoadError(
            f"S3 did not deliver {what} within {S3_DEADLINE_S:g} s; check the function's network (and, run "
            "locally, how long your AWS credentials take to resolve: a credential_process or SSO login)"
        )
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _download(
    client: Any, bucket: str, key: str, version_id: str | None, deadline: float
) -> tuple[bytes, dict[str, str]]:
    """The object's bytes and lower-cased metadata, or ``ModelLoadError`` once ``deadline`` (monotonic) passes."""

    def check_deadline() -> None:
        if time.monotonic() > deadline:
            raise ModelLoadError(
                f"S3 did not deliver s3://{bucket}/{key} within {S3_DEADLINE_S:g} s; check the function's network"
            )

    check_deadline()
    extra: dict[str, str] = {"VersionId": version_id} if version_id else {}
    response = client.get_object(Bucket=bucket, Key=key, **extra)
    chunks = []
    for chunk in response["Body"].iter_chunks(_CHUNK):
        chunks.append(chunk)
        check_deadline()
    return b"".join(chunks), {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}


def _write_atomically(data: bytes, dest: Path) -> None:
    """Write beside ``dest`` under a name of this process's own, then rename: readers see whole files only."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MAX_CACHED_MODEL_BYTES = 1 << 30  # a cached model.onnx above this is downloaded again, not read


def _cached_model(path: Path) -> tuple[bytes, str] | None:
    """The bytes of a model an earlier start left in the cache, and their sha256; ``None`` if there is none.

    Only a regular file of a plausible size is read: a FIFO would block init, a huge file would fill memory.
    """
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CACHED_MODEL_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data, hashlib.sha256(data).hexdigest()


def _recorded_sha256(manifest_data: bytes, uri: str) -> str | None:
    try:
        return parse_manifest(manifest_data, uri).sha256
    except ManifestError:
        return None  # reported, with its reason, once the download is done


def load_from_s3(settings: Settings, client: Any | None = None) -> ModelArtifact:
    """Download ``MODEL_S3_URI`` and its ``model.json``, verify both, and keep a copy in the cache folder.

    ``model.json`` is always downloaded. ``model.onnx`` is not when the cache already holds the model that
    ``model.json`` records (by sha256): only its object metadata is read then, for the same checks.
    """
    uri = settings.model_s3_uri
    if uri is None:
        raise ModelLoadError("MODEL_S3_URI is not set")
    bucket, key = parse_s3_uri(uri)
    model_key, manifest_key = _model_and_manifest_keys(key)
    model_uri, manifest_uri = f"s3://{bucket}/{model_key}", f"s3://{bucket}/{manifest_key}"
    cache = settings.model_cache_dir
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):  # a name of our own: concurrent cold starts must not collide
            pass
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache {cache}: {exc}. Set MODEL_CACHE_DIR to a writable folder (/tmp on Lambda)."
        ) from exc

    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + S3_DEADLINE_S
    version_id = settings.model_s3_version_id
    s3: Any = client

    def fetch(object_key: str, object_uri: str, version_id: str | None) -> tuple[bytes, dict[str, str]]:
        try:
            return _download(s3, bucket, object_key, version_id, deadline)
        except (BotoCoreError, ClientError) as exc:
            raise ModelLoadError(_describe_s3_error(exc, object_uri)) from exc

    def model_metadata() -> dict[str, str]:
        extra: dict[str, str] = {"VersionId": version_id} if version_id else {}
        try:
            response = s3.head_object(Bucket=bucket, Key=model_key, **extra)
        except (BotoCoreError, ClientError) as exc:
            raise ModelLoadError(_describe_s3_error(exc, model_uri)) from exc
        return {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}

    def fetch_both() -> tuple[tuple[bytes, dict[str, str]], tuple[bytes, dict[str, str]], str | None]:
        """Both objects, and the model's sha256 when it came from the cache (hashed there already)."""
        nonlocal s3
        # Made here, within the deadline: botocore resolves credentials as it makes the client, and a
        # credential_process or SSO login can take as long as it likes.
        if s3 is None:
            try:
                s3 = _s3_client()
            except (BotoCoreError, ClientError, ValueError) as exc:  # a missing profile, bad credentials or region
                raise ModelLoadError(_describe_client_error(exc, manifest_uri)) from exc
        manifest = fetch(manifest_key, manifest_uri, None)
        cached = _cached_model(cache / MODEL_FILENAME)  # here, within the deadline
        if cached is not None and cached[1] == _recorded_sha256(manifest[0], manifest_uri):
            try:
                return (cached[0], model_metadata()), manifest, cached[1]
            except ModelLoadError:
                pass  # a HEAD's error is a bare status code: the GET below says what is wrong
        return fetch(model_key, model_uri, version_id), manifest, None

    (model_data, model_meta), (manifest_data, manifest_meta), cached_sha256 = _by_deadline(
        fetch_both, deadline, f"{model_uri} and its model.json"
    )
    check_manifest_bytes(manifest_data, model_meta, manifest_meta, manifest_uri, settings.model_manifest_sha256)
    try:
        manifest = parse_manifest(manifest_data, manifest_uri)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    artifact = _verified_bytes(
        model_data, cache / MODEL_FILENAME, manifest, settings.model_sha256, model_uri, digest=cached_sha256
    )
    published = model_meta.get("sha256")
    if published is not None and published.lower() != artifact.sha256:
        raise ModelLoadError(
            f"checksum mismatch for {model_uri}: its object metadata says {published} but the "
            f"bytes hash to {artifact.sha256}. The object was overwritten or corrupted; re-publish it."
        )
    try:  # only once verified: a refused model must not replace a good cached copy
        _write_atomically(manifest_data, cache / MANIFEST_FILENAME)
        if cached_sha256 is None:
            _write_atomically(model_data, cache / MODEL_FILENAME)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the model into {cache}: {exc}") from exc
    return artifact


def check_manifest_bytes(
    data: bytes, model_meta: dict[str, str], manifest_meta: dict[str, str], uri: str, pinned: str | None = None
) -> None:
    """``model.json`` must be the one published with this ``model.onnx``: the thresholds live in it, not in the
    hashed model. ``publish`` records its sha256 in the model's metadata (and in its own), and prints it for
    ``pinned`` (``MODEL_MANIFEST_SHA256``): the metadata guards against accidents, only the pin against someone who
    can write to the bucket, since they can rewrite metadata too. Raises ``ModelLoadError``."""
    actual = hashlib.sha256(data).hexdigest()
    if pinned is not None and pinned.lower() != actual:
        raise ModelLoadError(
            f"{uri} hashes to {actual}, not the pinned model.json sha256 {pinned} (MODEL_MANIFEST_SHA256, or pull's "
            "--manifest-sha256): it is not the model.json that was published, or the pin is another version's. "
            "Check the version and the sha256s publish printed."
        )
    expected = model_meta.get("manifest-sha256")
    if expected is not None and expected.lower() != actual:
        raise ModelLoadError(
            f"{uri} is not the model.json published with this model.onnx (sha256 {actual}, the model's metadata "
            f"says {expected}): it was overwritten. Published versions are immutable: publish a new version."
        )
    own = manifest_meta.get("sha256")
    if own is not None and own.lower() != actual:
        raise ModelLoadError(
            f"checksum mismatch for {uri}: its object metadata says {own} but the bytes hash to {actual}. "
            "It was overwritten or corrupted; re-publish the version."
        )


def resolve_model(settings: Settings, s3_client: Any | None = None) -> ModelArtifact:
    """The verified model the settings ask for: S3 when ``MODEL_S3_URI`` is set, else the baked folder."""
    if settings.model_s3_uri:
        return load_from_s3(settings, s3_client)
    return load_baked(settings.model_dir, settings.model_sha256)
