"""S3 for tests and benchmarks: publish a model folder as ``cataract-train publish`` lays it out, and a moto
server on loopback that a separate process (the runtime client) can reach."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cataract_inference.model_source import sha256_of

# moto accepts any credentials; these keep a developer's real ones out of every request.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def publish_model_folder(client: Any, bucket: str, prefix: str, model_dir: Path, sha: str | None = None) -> str:
    """Put ``model.onnx`` (its sha256, or ``sha``, and model.json's in the object metadata) and ``model.json``
    under ``prefix``. Returns the sha256 of the model's bytes.
    """
    digest = sha256_of(model_dir / "model.onnx")
    manifest_digest = sha256_of(model_dir / "model.json")
    client.put_object(
        Bucket=bucket,
        Key=prefix + "model.onnx",
        Body=(model_dir / "model.onnx").read_bytes(),
        Metadata={"sha256": sha or digest, "manifest-sha256": manifest_digest},
    )
    client.put_object(
        Bucket=bucket,
        Key=prefix + "model.json",
        Body=(model_dir / "model.json").read_bytes(),
        Metadata={"sha256": manifest_digest},
    )
    return digest


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client_for(endpoint: str | None = None) -> Any:
    """A boto3 S3 client with the fake credentials, on ``endpoint`` (a moto server) or moto's in-process mock."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
