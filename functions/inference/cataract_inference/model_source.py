"""Where the model comes from: the baked-in folder, or S3 verified by sha256 and cached in /tmp.

Whatever the source, the bytes of ``model.onnx`` are hashed and must match the manifest (and
``MODEL_SHA256`` when set) before a session is ever built: the function never serves an
unverified model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import MANIFEST_FILENAME, MODEL_FILENAME, Manifest, ManifestError, load_manifest
from .settings import Settings

_CHUNK = 1024 * 1024


class ModelLoadError(RuntimeError):
    """The model could not be obtained or verified. The message says what to do."""


@dataclass(frozen=True)
class ModelArtifact:
    """A verified model file and its manifest."""

    model_path: Path
    manifest: Manifest
    sha256: str
    source: str


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
    """Accept a version folder (``…/v1/``) or the model object itself (``…/v1/model.onnx``)."""
    if not key or key.endswith("/"):
        return key + MODEL_FILENAME, key + MANIFEST_FILENAME
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    return key, folder + MANIFEST_FILENAME


def verify(model_path: Path, manifest: Manifest, expected_sha256: str | None, source: str) -> ModelArtifact:
    """Hash ``model_path`` and check it against the manifest and the pinned checksum."""
    if not model_path.is_file():
        raise ModelLoadError(f"model file not found: {model_path} ({source})")
    actual = sha256_of(model_path)
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
    return ModelArtifact(model_path=model_path, manifest=manifest, sha256=actual, source=source)


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

    return boto3.client(
        "s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    )


def _describe_s3_error(exc: Exception, uri: str) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return f"no AWS credentials to read {uri}; give the function (or your shell) an IAM role or profile"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return f"bucket of {uri} does not exist (check MODEL_S3_URI and the region)"
        if code in ("NoSuchKey", "404", "NotFound"):
            return f"{uri} does not exist (check the version folder; `publish` prints the URI)"
        if code in ("AccessDenied", "403", "Forbidden"):
            return f"access denied to {uri}; the role needs s3:GetObject (and s3:GetObjectVersion) on it"
        if code in ("NoSuchVersion", "InvalidArgument"):
            return f"{uri}: the object version does not exist ({code}); check MODEL_S3_VERSION_ID"
        return f"S3 refused {uri}: {code or exc}"
    return f"cannot reach S3 for {uri}: {exc}"


def _download(client: Any, bucket: str, key: str, dest: Path, version_id: str | None) -> dict[str, str]:
    """Download to a temporary file beside ``dest`` and rename, so a partial file never lands."""
    extra: dict[str, str] = {"VersionId": version_id} if version_id else {}
    response = client.get_object(Bucket=bucket, Key=key, **extra)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in response["Body"].iter_chunks(_CHUNK):
                fh.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}


def load_from_s3(settings: Settings, client: Any | None = None) -> ModelArtifact:
    """Download ``MODEL_S3_URI`` (and its ``model.json``) into the cache folder and verify it."""
    uri = settings.model_s3_uri
    if uri is None:
        raise ModelLoadError("MODEL_S3_URI is not set")
    bucket, key = parse_s3_uri(uri)
    model_key, manifest_key = _model_and_manifest_keys(key)
    cache = settings.model_cache_dir
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache {cache}: {exc}. Set MODEL_CACHE_DIR to a writable folder (/tmp on Lambda)."
        ) from exc

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = client or _s3_client()
        meta = _download(client, bucket, model_key, cache / MODEL_FILENAME, settings.model_s3_version_id)
        _download(client, bucket, manifest_key, cache / MANIFEST_FILENAME, None)
    except (BotoCoreError, ClientError) as exc:
        raise ModelLoadError(_describe_s3_error(exc, f"s3://{bucket}/{model_key}")) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot write the model into {cache}: {exc}") from exc
    try:
        manifest = load_manifest(cache / MANIFEST_FILENAME)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    artifact = verify(cache / MODEL_FILENAME, manifest, settings.model_sha256, f"s3://{bucket}/{model_key}")
    published = meta.get("sha256")
    if published is not None and published != artifact.sha256:
        raise ModelLoadError(
            f"checksum mismatch for s3://{bucket}/{model_key}: its object metadata says {published} but the "
            f"bytes hash to {artifact.sha256}. The object was overwritten or corrupted; re-publish it."
        )
    return artifact


def resolve_model(settings: Settings, s3_client: Any | None = None) -> ModelArtifact:
    """The verified model the settings ask for: S3 when ``MODEL_S3_URI`` is set, else the baked folder."""
    if settings.model_s3_uri:
        return load_from_s3(settings, s3_client)
    return load_baked(settings.model_dir, settings.model_sha256)
