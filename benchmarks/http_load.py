"""Concurrent clients against a running API: the deployed stage, `sam local start-api`, or `cataract-screen serve`.

    .venv/bin/python -m benchmarks.http_load URL [--api-key KEY] [--clients 4] [--requests 200] [--seconds 60]
        [--photo small|phone|PATH] [--json]

URL is the API's base (the stack's ApiUrl output, e.g. https://abc.execute-api.eu-west-1.amazonaws.com/v1/);
each client keeps one connection alive and posts the photo to URL/predict until REQUESTS are done or SECONDS
pass. The table gives the latency each client saw, end to end (TLS, API Gateway, Lambda), beside the function's
own `timing_ms`, and counts every answer by kind: API Gateway's throttling (429) is told apart from errors.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Stats, fmt, photo_for

TIMING_KEYS = ("decode", "inference", "postprocess", "total")


@dataclass
class LoadResult:
    """Everything the clients saw."""

    requests: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    server_timing_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TIMING_KEYS})
    first_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        """Answers that were a 200 with a screening result."""
        return self.statuses["200"]

    @property
    def throttled(self) -> int:
        """429s: API Gateway's rate or quota limit, not a fault of the function."""
        return self.statuses["429"]

    @property
    def errors(self) -> int:
        """Every answer that was neither a screening result nor throttling, transport failures included."""
        return self.requests - self.ok - self.throttled

    def as_json(self) -> dict[str, Any]:
        """The result as plain JSON (what ``--json`` prints)."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "throttled": self.throttled,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "statuses": dict(self.statuses),
            "latencies_ms": self.latencies_ms,
            "server_timing_ms": self.server_timing_ms,
            "first_errors": self.first_errors,
        }


def _connection(url: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    if url.scheme == "https":
        return http.client.HTTPSConnection(url.netloc, timeout=timeout)
    return http.client.HTTPConnection(url.netloc, timeout=timeout)


def _classify(status: int, data: bytes) -> tuple[str, dict[str, float] | None]:
    """The kind of an answer and, for a screening result, its ``timing_ms``."""
    if status != 200:
        return str(status), None
    try:
        body = json.loads(data)
        timing = body["timing_ms"] if "label" in body else None
    except (ValueError, KeyError, TypeError):
        timing = None
    if timing is None:
        return "200 without a screening result", None
    return "200", timing


def run_load(
    base_url: str,
    photo: bytes,
    *,
    clients: int = 4,
    total: int = 200,
    seconds: float = 60.0,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> LoadResult:
    """Post ``photo`` to ``base_url``/predict from ``clients`` threads until ``total`` requests or ``seconds``."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    path = url.path.rstrip("/") + "/predict"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    body = json.dumps({"image": base64.b64encode(photo).decode("ascii")}).encode()
    result = LoadResult()
    lock = threading.Lock()
    remaining = [total]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = _connection(url, timeout)
        while True:
            with lock:
                if remaining[0] <= 0 or time.monotonic() > deadline:
                    break
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                kind, timing = _classify(response.status, data)
            except (OSError, http.client.HTTPException) as exc:
                kind, timing, data = "transport error", None, repr(exc).encode()
                conn.close()
                conn = _connection(url, timeout)
            elapsed = (time.perf_counter() - t0) * 1000.0
            with lock:
                result.requests += 1
                result.latencies_ms.append(elapsed)
                result.statuses[kind] += 1
                if timing is not None:
                    for key in TIMING_KEYS:
                        if key in timing:
                            result.server_timing_ms[key].append(float(timing[key]))
                elif kind != "429" and len(result.first_errors) < 3:
                    result.first_errors.append(f"{kind}: {data[:200].decode(errors='replace')}")
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - started
    return result


def report(result: LoadResult, clients: int) -> str:
    """Markdown: counts by kind, requests/s, client latency and the function's own timing."""
    rate = result.requests / result.wall_s if result.wall_s else float("nan")
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(result.statuses.items()))
    lines = [
        f"{result.requests} requests from {clients} clients in {result.wall_s:.1f} s ({fmt(rate, 1)} requests/s); "
        f"{result.ok} screened, {result.throttled} throttled (429), {result.errors} errors. By kind: {kinds}.",
        "",
        "| what | n | p50 ms | p95 ms | min–max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = {"client round trip": result.latencies_ms}
    rows |= {f"function timing_ms.{key}": values for key, values in result.server_timing_ms.items()}
    for name, values in rows.items():
        s = Stats.of(values)
        lines.append(f"| {name} | {s.n} | {fmt(s.p50)} | {fmt(s.p95)} | {fmt(s.lo)}–{fmt(s.hi)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the clients; print the table (or JSON). Exits 1 when any answer was an error."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the API's base URL (the stack's ApiUrl output)")
    parser.add_argument("--api-key", help="the x-api-key value (aws apigateway get-api-key --include-value)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--photo", default="small", help="small, phone, or the path of a photo of your own")
    parser.add_argument("--json", action="store_true", help="print the raw result as one JSON line")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")
    try:
        result = run_load(
            args.url,
            photo_for(args.photo),
            clients=args.clients,
            total=args.requests,
            seconds=args.seconds,
            api_key=args.api_key,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print(report(result, args.clients))
        for error in result.first_errors:
            print(error, file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
