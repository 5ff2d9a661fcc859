"""Publish a model folder to S3 and pull a published version back, verified by sha256.

Layout (what ``cataract_inference.model_source.load_from_s3`` reads)::

    s3://BUCKET/PREFIX/<version>/model.onnx   (object metadata sha256=<hex>, manifest-sha256=<hex of model.json>,
                                                published-at=<ISO time>, card=MODEL_CARD.md)
    s3://BUCKET/PREFIX/<version>/model.json   (object metadata sha256=<hex>)
    s3://BUCKET/PREFIX/<version>/MODEL_CARD.md
    s3://BUCKET/PREFIX/latest.json            {"version", "model_uri", "sha256", "manifest_sha256"}

The card travels with the model because the image bakes in the whole model folder: a pull that
replaced only the model and its manifest would ship the previous model's card. A published version
is immutable: publishing other bytes under the same version is refused, so a pinned model and the
model.json it was published with always stay together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cataract_inference.manifest import (
    CARD_FILENAME,
    MANIFEST_FILENAME,
    MODEL_FILENAME,
    ManifestError,
    load_manifest,
    version_problem,
)
from cataract_inference.model_source import ModelLoadError, check_manifest_bytes, parse_s3_uri, sha256_of

from .card import gate_calibrated
from .files import keep_mode

LATEST = "latest.json"
# template.yaml's ModelS3Uri MaxLength: what the function version's 256-character description leaves for it.
MODEL_S3_URI_MAX_LENGTH = 107


class PublishError(RuntimeError):
    """Publishing or pulling failed; the message says why and what to do."""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` to bucket and a prefix that is empty or ends with '/' (serving's parser)."""
    try:
        bucket, key = parse_s3_uri(uri)
    except ModelLoadError as exc:
        raise PublishError(f"expected an s3://BUCKET/PREFIX URI: {exc}") from exc
    prefix = key.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def _client() -> Any:
    import boto3

    return boto3.client("s3")


# What S3 answers for a key that is not there (HEAD requests carry only the status); and for a missing bucket.
_MISSING_KEY = frozenset({"404", "NotFound", "NoSuchKey"})
_NOT_FOUND = _MISSING_KEY | {"NoSuchBucket"}


def _code(exc: Exception) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return str(code) if code is not None else None


def _not_found(exc: Exception) -> bool:
    return _code(exc) in _NOT_FOUND


def _explain(exc: Exception, what: str, needs: str) -> PublishError:
    """A one-line error for an S3 failure while doing ``what``; ``needs``: the IAM permissions it takes."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return PublishError(f"no AWS credentials to {what}: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return PublishError(f"cannot {what}: the bucket does not exist (create it, or check the name and region)")
        if code in _MISSING_KEY:
            return PublishError(f"cannot {what}: S3 said an object it needed does not exist ({code})")
        if code in ("AccessDenied", "403", "Forbidden"):
            # S3's own words when they say more than "Access Denied": a KMS key or an explicit deny, which no
            # s3: permission of ours would fix.
            said = str(exc.response.get("Error", {}).get("Message", "")).strip()
            detail = (
                f" (S3 said: {said[:300]})"
                if said.rstrip(".").lower() not in ("", "access denied", "forbidden")
                else ""
            )
            return PublishError(f"cannot {what}: access denied{detail}: {needs}")
        return PublishError(f"cannot {what}: S3 said {code or exc}")
    return PublishError(f"cannot {what}: {exc}")


# What boto3's transfer manager writes into S3UploadFailedError's message: S3's own error, as ClientError says it.
_CLIENT_ERROR_TEXT = re.compile(r"An error occurred \((?P<code>[^)]+)\) when calling the (?P<operation>\w+) operation")


def _wrapped_client_error(exc: Exception) -> Exception:
    """The S3 error that boto3's ``upload_file`` wrapped into ``S3UploadFailedError``.

    The transfer manager raises that inside its ``except ClientError``, so S3's error is the context; failing that,
    it is rebuilt from the message, which carries its text. Otherwise ``exc`` itself (its message says what it can).
    """
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    for _ in range(8):  # a chain can loop back on itself
        if seen is None:
            break
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    found = _CLIENT_ERROR_TEXT.search(str(exc))
    if found is None:
        return exc
    return ClientError({"Error": {"Code": found["code"], "Message": str(exc)}}, found["operation"])


class _UploadFailed(Exception):
    """S3 refused an upload: which file, and S3's own error (``upload_file`` hides it in ``S3UploadFailedError``)."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"uploading {name}: {error}")
        self.name, self.error = name, error


def _upload(client: Any, path: Path, bucket: str, key: str, extra_args: dict[str, Any]) -> None:
    """``client.upload_file``, failing with ``_UploadFailed`` where boto3 raises ``S3UploadFailedError``."""
    from boto3.exceptions import S3UploadFailedError

    try:
        client.upload_file(str(path), bucket, key, ExtraArgs=extra_args)
    except S3UploadFailedError as exc:
        raise _UploadFailed(path.name, _wrapped_client_error(exc)) from exc


def _publish_needs(bucket: str, prefix: str) -> str:
    return (
        f"publish needs s3:ListBucket on the bucket (arn:aws:s3:::{bucket}: it starts with HeadBucket, and S3 answers "
        f"a HEAD of a key not published yet with 403 without it) and s3:PutObject and s3:GetObject on "
        f"arn:aws:s3:::{bucket}/{prefix}*"
    )


def _pull_needs(bucket: str, prefix: str) -> str:
    return (
        f"pull needs s3:GetObject on arn:aws:s3:::{bucket}/{prefix}*; without s3:ListBucket on arn:aws:s3:::{bucket}, "
        "S3 also answers AccessDenied for a key that does not exist, so check the URI and --version too"
    )


@contextlib.contextmanager
def _named_if_missing(bucket: str, key: str, missing: str) -> Iterator[None]:
    """Turn S3's "no such key" inside the block into a PublishError that names the key and says ``missing`` (what
    that means, and what to do); any other S3 error passes through."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as exc:
        if _code(exc) not in _MISSING_KEY:
            raise
        raise PublishError(f"s3://{bucket}/{key} does not exist: {missing}") from exc


def _card_version(card: Path) -> str | None:
    """The version a model card's title names (``# Model card: NAME VERSION``), or None."""
    try:
        with card.open(encoding="utf-8") as fh:
            title = fh.readline().strip()
    except UnicodeDecodeError as exc:
        raise PublishError(
            f"{card} is not UTF-8 text ({exc.reason}): save it as UTF-8, or move it away and write it anew with "
            f"`cataract-train card --model-dir {card.parent}`"
        ) from exc
    if not title.startswith("# Model card: "):
        return None
    return title.rsplit(" ", 1)[-1]


def publish(model_dir: Path, uri: str, client: Any | None = None, *, make_latest: bool = False) -> dict[str, str]:
    """Upload ``model.onnx`` (sha256 in its metadata), ``model.json`` and ``MODEL_CARD.md``, then move ``latest.json``.

    The manifest is checked against the file, and the card against the manifest's version, first, so a
    stale set is never published. The pointer moves last, so readers of ``latest.json`` never see a
    half-published version. Publishing a version again with the same bytes is a retry: only what is missing is
    uploaded, and a card that changed since (a new object version of the model would leave the one a function pins
    to expire), and ``latest.json`` moves only if no version was published after it, unless ``make_latest`` (a
    rollback).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    model_dir = Path(model_dir)
    model, manifest_path = model_dir / MODEL_FILENAME, model_dir / MANIFEST_FILENAME
    if not model.is_file():
        raise PublishError(f"no {MODEL_FILENAME} in {model_dir}; run `cataract-train export` first")
    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as exc:
        raise PublishError(str(exc)) from exc
    digest = sha256_of(model)
    if digest != manifest.sha256:
        raise PublishError(f"checksum mismatch: {model} hashes to {digest} but model.json says {manifest.sha256}")
    card = model_dir / CARD_FILENAME
    if not card.is_file():
        raise PublishError(
            f"no {CARD_FILENAME} in {model_dir}; run `cataract-train card --model-dir {model_dir}` first"
        )
    if _card_version(card) != manifest.version:
        raise PublishError(
            f"{card} describes version {_card_version(card)}, not {manifest.version}; "
            f"run `cataract-train card --model-dir {model_dir}` (and the gate calibration) first"
        )
    if not gate_calibrated(manifest):
        # Published all the same (a test deployment may want it), but not in silence: it screens a cat as cataract.
        print(
            f"warning: {model_dir}'s gradability gate was never calibrated for this model, so it refuses no "
            f"non-eye image; calibrate it before it serves anyone: python -m cataract_training.gate --model-dir "
            f"{model_dir} --data <photos>",
            file=sys.stderr,
        )
    bucket, prefix = split_uri(uri)
    folder = f"{prefix}{manifest.version}/"
    manifest_digest = sha256_of(manifest_path)
    client = client or _client()
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _not_found(exc):
                raise PublishError(f"cannot publish: the bucket {bucket} does not exist (check the name)") from exc
            raise
        first_published = _refuse_a_different_publication(client, bucket, folder, digest, manifest_digest)
        retry = first_published is not None
        problem = None if retry else version_problem(manifest.version)  # older tools' versions stay retryable
        if problem:
            raise PublishError(f"{manifest_path}: {problem}; export it again with --version")
        published_at = first_published or dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        uploaded = []
        if not retry:
            # CARD: the model goes up first, so it alone can tell pull that a missing card is a failed upload.
            metadata = {
                "sha256": digest,
                "manifest-sha256": manifest_digest,
                PUBLISHED_AT: published_at,
                CARD: CARD_FILENAME,
            }
            _upload(client, model, bucket, folder + MODEL_FILENAME, {"Metadata": metadata})
            uploaded.append(MODEL_FILENAME)
        if not (retry and _head(client, bucket, folder + MANIFEST_FILENAME) is not None):
            _upload(
                client,
                manifest_path,
                bucket,
                folder + MANIFEST_FILENAME,
                {"Metadata": {"sha256": manifest_digest}, "ContentType": "application/json"},
            )
            uploaded.append(MANIFEST_FILENAME)
        # The card is not pinned by anyone: a corrected one (say, after the gate calibration) replaces the old.
        card_digest = sha256_of(card)
        stored = _head(client, bucket, folder + CARD_FILENAME) if retry else None
        if (stored or {}).get("Metadata", {}).get("sha256") != card_digest:
            _upload(
                client,
                card,
                bucket,
                folder + CARD_FILENAME,
                {"Metadata": {"sha256": card_digest}, "ContentType": "text/markdown; charset=utf-8"},
            )
            uploaded.append(CARD_FILENAME)
        pointer = {
            "version": manifest.version,
            "model_uri": f"s3://{bucket}/{folder}{MODEL_FILENAME}",
            "sha256": digest,
            "manifest_sha256": manifest_digest,
        }
        newer = (
            None if make_latest or not retry else _newer_latest(client, bucket, prefix, manifest.version, published_at)
        )
        if newer is None:
            client.put_object(
                Bucket=bucket, Key=prefix + LATEST, Body=json.dumps(pointer).encode(), ContentType="application/json"
            )
            latest = f"moved to {manifest.version}"
        else:
            latest = f"left at {newer}, published after {manifest.version}; pass --make-latest to roll {LATEST} back"
    except (BotoCoreError, ClientError, _UploadFailed) as exc:
        what, error = f"publish to s3://{bucket}/{folder}", exc
        if isinstance(exc, _UploadFailed):
            error = exc.error
            operation = getattr(error, "operation_name", None)  # PutObject, or CreateMultipartUpload for a large file
            what += f" ({operation} of {exc.name})" if operation else f" (uploading {exc.name})"
        failed = _explain(error, what, _publish_needs(bucket, prefix))
        # Safe: the same bytes again are a retry (only what is missing goes up), and latest.json moves last.
        raise PublishError(
            f"{failed}. Re-running the same publish is safe once that is fixed ({model_dir} unchanged): it uploads "
            f"only what is missing, and {LATEST} moves only after all three files are up"
        ) from exc
    return {**pointer, "uploaded": ", ".join(uploaded) or "nothing (already published)", "latest": latest}


# Model object metadata: when the version was first published, so that a retry can tell which version is newer.
PUBLISHED_AT = "published-at"
# Model object metadata: the card published with it, so that pull calls a version whose card is missing half-published
# (the card's upload failed); a model without it was published by older tools, which may have put no card.
CARD = "card"


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """An object's HEAD answer, or None when it is not there."""
    from botocore.exceptions import ClientError

    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise


def _refuse_a_different_publication(
    client: Any, bucket: str, folder: str, digest: str, manifest_digest: str
) -> str | None:
    """A version already published with other bytes stays as it is: re-publishing the same is a retry.

    Returns None when the version is not published yet, else when it first was (ISO time; S3's LastModified for
    a version published before that was recorded).
    """
    head = _head(client, bucket, folder + MODEL_FILENAME)
    if head is None:
        return None
    meta = head.get("Metadata") or {}
    if meta.get("sha256") != digest or meta.get("manifest-sha256") != manifest_digest:
        raise PublishError(
            f"s3://{bucket}/{folder} is already published with a different model or model.json; published versions "
            "are immutable (functions may pin them): export under a new version instead"
        )
    return _published_at(head)


def _published_at(head: dict[str, Any]) -> str:
    recorded = (head.get("Metadata") or {}).get(PUBLISHED_AT)
    if recorded:
        return str(recorded)
    modified = head.get("LastModified")
    return modified.astimezone(dt.UTC).isoformat(timespec="microseconds") if modified else ""


def _newer_latest(client: Any, bucket: str, prefix: str, version: str, published_at: str) -> str | None:
    """The version ``latest.json`` names when it was published after ``version`` (which a retry must not undo)."""
    from botocore.exceptions import ClientError

    try:
        current = json.loads(client.get_object(Bucket=bucket, Key=prefix + LATEST)["Body"].read())
        other = current.get("version") if isinstance(current, dict) else None
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # an unreadable pointer is rewritten
    if not isinstance(other, str) or other == version:
        return None
    head = _head(client, bucket, f"{prefix}{other}/{MODEL_FILENAME}")
    if head is None:
        return None  # it names a version that is not there: pointing at this one mends it
    return other if _published_at(head) >= published_at else None


def _get(client: Any, bucket: str, key: str, dest: Path) -> dict[str, str]:
    response = client.get_object(Bucket=bucket, Key=key)
    with dest.open("wb") as fh:
        shutil.copyfileobj(response["Body"], fh)
    return {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}


def pull(
    uri: str,
    dest: Path,
    version: str | None = None,
    client: Any | None = None,
    *,
    sha256: str | None = None,
    manifest_sha256: str | None = None,
) -> dict[str, str]:
    """Fetch ``version`` (or the one ``latest.json`` names) into ``dest`` and verify it.

    The files land in a temporary folder first and replace ``dest``'s only after the sha256 in the
    object metadata, the manifest and the bytes all agree, and with the sha256s ``publish`` printed when given
    (``sha256``, ``manifest_sha256``): only those guard against someone who can write to the bucket. The model card
    comes too; a version older tools published without one gets a card rendered from its manifest, never the previous
    model's, and one whose model records a card that is missing is refused as half-published.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_uri(uri)
    client = client or _client()
    try:
        from_latest = version is None
        if version is None:
            nothing = (
                f"nothing was published under s3://{bucket}/{prefix} (check the URI against what `cataract-train "
                "publish` printed), or pass --version"
            )
            with _named_if_missing(bucket, prefix + LATEST, nothing):
                body = client.get_object(Bucket=bucket, Key=prefix + LATEST)["Body"].read()
            pointer = json.loads(body)
            version = pointer.get("version") if isinstance(pointer, dict) else None
            if not isinstance(version, str) or not version.strip("/"):
                raise PublishError(f"s3://{bucket}/{prefix}{LATEST} names no version: {body[:200]!r}; re-publish")
        folder = f"{prefix}{version}/"
        dest = Path(dest)
        if dest.exists() and not dest.is_dir():
            raise PublishError(f"--model-dir {dest} is a file, not a folder")
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".pull-") as tmp:
            tmp_dir = Path(tmp)
            never_whole = (
                f"{LATEST} names version {version}, which was never published whole; re-publish it, or pull another "
                "with --version"
                if from_latest
                else f"no version {version} is published under s3://{bucket}/{prefix} (check --version against what "
                f"`cataract-train publish` printed, or leave it out for the one {LATEST} names)"
            )
            with _named_if_missing(bucket, folder + MODEL_FILENAME, f"{never_whole}; nothing was written to {dest}"):
                meta = _get(client, bucket, folder + MODEL_FILENAME, tmp_dir / MODEL_FILENAME)
            half = (
                f"version {version} is half-published (a publish that failed or was interrupted part-way). Run that "
                "`cataract-train publish` again with its model folder unchanged (it uploads only what is missing), or "
                f"pull another version; nothing was written to {dest}"
            )
            with _named_if_missing(bucket, folder + MANIFEST_FILENAME, f"{MODEL_FILENAME} is there, so {half}"):
                manifest_meta = _get(client, bucket, folder + MANIFEST_FILENAME, tmp_dir / MANIFEST_FILENAME)
            try:
                check_manifest_bytes(
                    (tmp_dir / MANIFEST_FILENAME).read_bytes(),
                    meta,
                    manifest_meta,
                    f"s3://{bucket}/{folder}{MANIFEST_FILENAME}",
                    manifest_sha256,
                )
            except ModelLoadError as exc:
                raise PublishError(f"{exc}; nothing was written to {dest}") from exc
            if meta.get(CARD):
                # Published with a card: without it, the rendered one would ship without the gate's section.
                with _named_if_missing(
                    bucket,
                    folder + CARD_FILENAME,
                    f"{MODEL_FILENAME} records that it was published with one, so {half}",
                ):
                    _get(client, bucket, folder + CARD_FILENAME, tmp_dir / CARD_FILENAME)
                card_published = True
            else:
                card_published = _pull_card(client, bucket, folder, tmp_dir)
            digest = sha256_of(tmp_dir / MODEL_FILENAME)
            try:
                manifest = load_manifest(tmp_dir / MANIFEST_FILENAME)
            except ManifestError as exc:
                raise PublishError(str(exc)) from exc
            published = meta.get("sha256")
            if published is None:
                raise PublishError(f"s3://{bucket}/{folder}{MODEL_FILENAME} has no sha256 metadata; re-publish it")
            if not (digest == published == manifest.sha256):
                raise PublishError(
                    f"checksum mismatch for s3://{bucket}/{folder}: bytes {digest}, metadata {published}, "
                    f"manifest {manifest.sha256}; nothing was written to {dest}"
                )
            if sha256 is not None and sha256.lower() != digest:
                raise PublishError(
                    f"s3://{bucket}/{folder}{MODEL_FILENAME} hashes to {digest}, not the pinned --sha256 {sha256}; "
                    f"nothing was written to {dest}"
                )
            if not card_published:
                from .card import write_card  # imports torch (through the backbones): only when needed

                write_card(manifest, tmp_dir)
            elif _card_version(tmp_dir / CARD_FILENAME) != manifest.version:
                raise PublishError(
                    f"s3://{bucket}/{folder}{CARD_FILENAME} does not describe version {manifest.version}; "
                    f"re-publish it; nothing was written to {dest}"
                )
            for name in (MODEL_FILENAME, MANIFEST_FILENAME, CARD_FILENAME):
                keep_mode(dest / name, tmp_dir / name)
                os.replace(tmp_dir / name, dest / name)
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc, f"pull from s3://{bucket}/{prefix}", _pull_needs(bucket, prefix)) from exc
    except (KeyError, json.JSONDecodeError) as exc:
        raise PublishError(f"s3://{bucket}/{prefix}{LATEST} is not a valid pointer: {exc}") from exc
    return {
        "version": str(version),
        "sha256": digest,
        "manifest_sha256": sha256_of(dest / MANIFEST_FILENAME),
        "pinned": _pinned(sha256, manifest_sha256),
        "dest": str(dest),
        "model_card": "published" if card_published else "rendered from model.json (none was published)",
    }


def _pinned(sha256: str | None, manifest_sha256: str | None) -> str:
    """Say which files were checked against a sha256 the caller gave, and which were taken on the bucket's word."""
    if sha256 and manifest_sha256:
        return "both sha256s"
    if manifest_sha256:  # model.json records model.onnx's sha256, which the bytes must match
        return f"{MANIFEST_FILENAME}, and {MODEL_FILENAME} through the sha256 that {MANIFEST_FILENAME} records"
    if sha256:
        return f"only {MODEL_FILENAME}: trusted the bucket's own metadata for {MANIFEST_FILENAME}"
    return "no: trusted the bucket's own metadata"


def _pull_card(client: Any, bucket: str, folder: str, tmp_dir: Path) -> bool:
    """Fetch the version's model card into ``tmp_dir``; False when it was published (by older tools) without one."""
    from botocore.exceptions import ClientError

    try:
        _get(client, bucket, folder + CARD_FILENAME, tmp_dir / CARD_FILENAME)
    except ClientError as exc:
        if _not_found(exc):
            return False
        raise
    return True
