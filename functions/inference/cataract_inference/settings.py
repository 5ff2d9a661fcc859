"""Environment configuration, parsed once.

Every knob the function reads from its environment lives here, so the rest of the code takes a
``Settings`` object and never touches ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The image copies model/ beside the package; a source checkout has it one level up too.
DEFAULT_MODEL_DIR = PACKAGE_DIR.parent / "model"

LAMBDA_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024
# The decoder's default limits (MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE). Pillow keeps RGB at 4 bytes a pixel (a 40 MP
# decode is ~160 MB), and any WebP goes through its animation decoder: measured, 16 bytes a pixel at peak.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_IMAGE_SIDE = 12_000
# Pillow refuses any image over twice its MAX_IMAGE_PIXELS (89,478,485), whatever we allow.
PILLOW_PIXEL_CEILING = 2 * 89_478_485
# Sizing on Lambda: the worst accepted photo (a WebP) peaks at this many bytes a pixel, over the warm process
# (~140 MiB) and the runtime's own (~100 MiB). A limit the memory cannot decode would end in an out-of-memory kill.
WORST_BYTES_PER_PIXEL = 16
PROCESS_OVERHEAD_MIB = 250

# A bucket name botocore accepts: legacy us-east-1 buckets may have capitals and "_"; template.yaml's ModelS3Uri
# holds new stacks to today's rule (lower case, 3-63 characters) and asks for a key too.
S3_URI_PATTERN = r"s3://[A-Za-z0-9._-]{1,255}(/.*)?"
# Far above any photo a request can carry (Lambda's payload limit is 6 MB): a larger limit is a typo.
MAX_BODY_LIMIT = 1 << 30

# Every response carries it, errors included; template.yaml's gateway responses repeat it verbatim.
DEFAULT_DISCLAIMER = "Screening aid, not a diagnosis. Refer to an eye-care professional for diagnosis."


class ConfigError(ValueError):
    """A setting in the environment is malformed."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # Plain ASCII digits only: int() also takes "1_6", "+2" and full-width digits, which no one means.
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise ConfigError(f"{name} must be an integer in plain digits, got {raw[:40]!r}")
    if len(raw.lstrip("-0")) > 30:  # int() refuses 4301 digits with a message that names no variable
        bound = f">= {minimum}" if raw.startswith("-") else f"<= {maximum}" if maximum is not None else "far smaller"
        raise ConfigError(f"{name} must be {bound}, got a number of {len(raw)} digits")
    value = int(raw)
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def _sha256(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip().lower() or None
    if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise ConfigError(f"{name} must be 64 hex characters")
    return value


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    """A text setting, stripped; unset or blank gives ``default``. It must be UTF-8: an environment variable that
    is not reaches Python as lone surrogates, which no response body can carry."""
    value = env.get(name, "").strip() or default
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{name} is not valid UTF-8 text; set it in UTF-8") from exc
    return value


def powertools_name(env: Mapping[str, str], name: str, default: str) -> str:
    """POWERTOOLS_SERVICE_NAME or POWERTOOLS_METRICS_NAMESPACE, stripped (observability passes it to Powertools
    itself): unset gives ``default``, but set and blank is refused. Powertools took a blank one as it was: no log
    lines, metrics without the ``service`` dimension the alarms filter on, or a namespace CloudWatch cannot use."""
    if name not in env:
        return default
    value = env[name].strip()
    if not value:
        raise ConfigError(f"{name} is set but blank; set it to a name, or unset it for {default!r}")
    return _text(env, name, default)


@dataclass(frozen=True)
class Settings:
    """The function's configuration."""

    model_dir: Path
    model_s3_uri: str | None
    model_sha256: str | None
    model_manifest_sha256: str | None
    model_s3_version_id: str | None
    model_cache_dir: Path
    ort_intra_op_threads: int
    max_body_bytes: int
    max_image_pixels: int
    max_image_side: int
    disclaimer: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse settings from ``env`` (``os.environ`` by default)."""
        env = os.environ if env is None else env
        s3_uri = env.get("MODEL_S3_URI", "").strip() or None
        if s3_uri is not None and not re.fullmatch(S3_URI_PATTERN, s3_uri):
            raise ConfigError(
                f"MODEL_S3_URI must be s3://BUCKET/PREFIX/VERSION/ with a bucket name S3 allows (letters, digits, "
                f"'.', '-' and '_'), got {s3_uri!r}"
            )
        if env.get("MODEL_S3_VERSION_ID", "").strip() and s3_uri is None:
            raise ConfigError("MODEL_S3_VERSION_ID pins an S3 object version, so it needs MODEL_S3_URI")
        sha = _sha256(env, "MODEL_SHA256")
        manifest_sha = _sha256(env, "MODEL_MANIFEST_SHA256")
        if manifest_sha is not None and s3_uri is None:
            raise ConfigError(
                "MODEL_MANIFEST_SHA256 checks the model.json of a model from MODEL_S3_URI, so it needs it"
            )
        max_image_pixels = _int(
            env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1, maximum=PILLOW_PIXEL_CEILING
        )
        memory_mib = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "").strip()
        if memory_mib.isdigit():
            fits = pixels_that_fit(int(memory_mib))
            if max_image_pixels > fits:
                raise ConfigError(
                    f"MAX_IMAGE_PIXELS={max_image_pixels} cannot be decoded in this function's {memory_mib} MB "
                    f"(a WebP peaks at {WORST_BYTES_PER_PIXEL} bytes a pixel): set it to at most {fits}, or raise "
                    "MemorySize"
                )
        return cls(
            model_dir=Path(env.get("MODEL_DIR", "").strip() or DEFAULT_MODEL_DIR),
            model_s3_uri=s3_uri,
            model_sha256=sha,
            model_manifest_sha256=manifest_sha,
            model_s3_version_id=env.get("MODEL_S3_VERSION_ID", "").strip() or None,
            model_cache_dir=Path(env.get("MODEL_CACHE_DIR", "").strip() or "/tmp/cataract-model"),
            # Lambda has at most 6 vCPUs; thousands of threads would take minutes to start.
            ort_intra_op_threads=_int(env, "ORT_INTRA_OP_THREADS", 1, minimum=1, maximum=64),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", LAMBDA_SYNC_PAYLOAD_BYTES, minimum=1, maximum=MAX_BODY_LIMIT),
            max_image_pixels=max_image_pixels,
            max_image_side=_int(env, "MAX_IMAGE_SIDE", DEFAULT_MAX_IMAGE_SIDE, minimum=1),
            disclaimer=_text(env, "DISCLAIMER", DEFAULT_DISCLAIMER),
        )


def pixels_that_fit(memory_mib: int) -> int:
    """The largest MAX_IMAGE_PIXELS a function of ``memory_mib`` can decode in its worst case (a WebP)."""
    return max(0, (memory_mib - PROCESS_OVERHEAD_MIB) * 2**20 // WORST_BYTES_PER_PIXEL)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed on first use."""
    return Settings.from_env()
