"""Concurrent clients against a running API: the deployed stage, `sam local start-api`, or `cataract-screen serve`.

    .venv/bin/python -m benchmarks.http_load URL [--api-key KEY] [--clients 4] [--requests 200] [--seconds 60]
        [--photo small|phone|PATH] [--json]

URL is the API's base (the stack's ApiUrl output, e.g. https://abc.execute-api.eu-west-1.amazonaws.com/v1/);
each client keeps one connection alive and posts the photo to URL/predict until REQUESTS are done or SECONDS
pass. The table gives the latency each client saw, end to end (TLS, API Gateway, Lambda), beside the function's
own `timing_ms`, and counts every answer by kind: API Gateway's throttling (429) is told apart from errors, and
the round trips of screened answers, throttled ones and errors are separate rows.

The key can come from the CATARACT_API_KEY environment variable instead of --api-key (which `ps` shows to
every user of the machine); --api-key wins when both are given. The key is never printed.

Exit status: 0 when every answer was a screening result; 1 when any answer was an error or none was screened
(the reason on stderr); 2 for bad arguments; 130 on Ctrl-C, after printing the partial table, marked as such.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Stats, fmt, photo_for

TIMING_KEYS = ("decode", "inference", "postprocess", "total")
API_KEY_ENV = "CATARACT_API_KEY"
SCREENED, THROTTLED = "200", "429"


@dataclass
class LoadResult:
    """Everything the clients saw."""

    requests: int = 0
    wall_s: float = 0.0
    #: Every request's round trip, whatever its answer, in the order they completed.
    latencies_ms: list[float] = field(default_factory=list)
    #: The same round trips by kind of answer: a fast 429 must not pass for a fast screening.
    latencies_ms_by_kind: dict[str, list[float]] = field(default_factory=dict)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    server_timing_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TIMING_KEYS})
    first_errors: list[str] = field(default_factory=list)
    #: True when Ctrl-C stopped the run: the counts are those of the requests answered before it.
    interrupted: bool = False

    def record(self, kind: str, elapsed_ms: float, timing: dict[str, float] | None, data: bytes) -> None:
        """Count one answer of ``kind`` that took ``elapsed_ms``; ``timing`` is a screening result's ``timing_ms``."""
        self.requests += 1
        self.latencies_ms.append(elapsed_ms)
        self.latencies_ms_by_kind.setdefault(kind, []).append(elapsed_ms)
        self.statuses[kind] += 1
        if timing is not None:
            for key in TIMING_KEYS:
                if key in timing:
                    self.server_timing_ms[key].append(float(timing[key]))
        elif kind != THROTTLED and len(self.first_errors) < 3:
            self.first_errors.append(f"{kind}: {data[:200].decode(errors='replace')}")

    @property
    def ok(self) -> int:
        """Answers that were a 200 with a screening result."""
        return self.statuses[SCREENED]

    @property
    def throttled(self) -> int:
        """429s: API Gateway's rate or quota limit, not a fault of the function."""
        return self.statuses[THROTTLED]

    @property
    def screened_latencies_ms(self) -> list[float]:
        """Round trips of the answers that were a screening result."""
        return self.latencies_ms_by_kind.get(SCREENED, [])

    @property
    def throttled_latencies_ms(self) -> list[float]:
        """Round trips of the 429s."""
        return self.latencies_ms_by_kind.get(THROTTLED, [])

    @property
    def error_latencies_ms(self) -> list[float]:
        """Round trips of every other answer (transport failures included)."""
        kinds = self.latencies_ms_by_kind.items()
        return [ms for kind, values in kinds if kind not in (SCREENED, THROTTLED) for ms in values]

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
            "interrupted": self.interrupted,
            "statuses": dict(self.statuses),
            "latencies_ms": self.latencies_ms,
            "latencies_ms_by_kind": self.latencies_ms_by_kind,
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
    return SCREENED, timing


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
    """Post ``photo`` to ``base_url``/predict from ``clients`` threads until ``total`` requests or ``seconds``.

    Ctrl-C (KeyboardInterrupt) in the calling thread stops the clients: no request starts after it, answers still
    in flight are not counted, and the result comes back with ``interrupted`` set instead of the exception.
    """
    url = urllib.parse.urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    if clients < 1 or total < 1 or not seconds > 0:  # `not >` also refuses NaN
        raise ValueError(f"clients and total must be at least 1 and seconds above 0: {clients}, {total}, {seconds}")
    path = url.path.rstrip("/") + "/predict"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    body = json.dumps({"image": base64.b64encode(photo).decode("ascii")}).encode()
    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()
    remaining = [total]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = _connection(url, timeout)
        try:
            while not stop.is_set():
                with lock:
                    if stop.is_set() or remaining[0] <= 0 or time.monotonic() > deadline:
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
                    if stop.is_set():  # answered after Ctrl-C: the partial result is already being reported
                        break
                    result.record(kind, elapsed, timing, data)
        finally:
            conn.close()

    started = time.perf_counter()
    # Daemon threads: a client waiting on an answer (up to `timeout`) must not keep the process alive after Ctrl-C.
    threads = [threading.Thread(target=worker, name=f"http-load-client-{i}", daemon=True) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        # Short joins in a loop, so Ctrl-C reaches this thread between them on every platform.
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        with lock:  # under the lock: once set, no client changes the result the caller is about to read
            stop.set()
            result.interrupted = True
    result.wall_s = time.perf_counter() - started
    return result


def report(result: LoadResult, clients: int) -> str:
    """Markdown: counts by kind, requests/s, client latency by kind of answer and the function's own timing."""
    rate = result.requests / result.wall_s if result.wall_s else float("nan")
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(result.statuses.items()))
    lines = []
    if result.interrupted:
        lines += [f"**Interrupted (Ctrl-C) after {result.wall_s:.1f} s: partial results.**", ""]
    lines += [
        f"{result.requests} requests from {clients} clients in {result.wall_s:.1f} s ({fmt(rate, 1)} requests/s); "
        f"{result.ok} screened, {result.throttled} throttled (429), {result.errors} errors. By kind: {kinds}.",
        "",
        "| what | n | p50 ms | p95 ms | min–max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    # Screened answers only: a fast 429 or error mixed in would pull the percentiles away from any real screening.
    rows = {"client round trip, screened (200)": result.screened_latencies_ms}
    if result.throttled:
        rows["client round trip, throttled (429)"] = result.throttled_latencies_ms
    if result.errors:
        rows["client round trip, errors"] = result.error_latencies_ms
    rows |= {f"function timing_ms.{key}": values for key, values in result.server_timing_ms.items()}
    for name, values in rows.items():
        s = Stats.of(values)
        lines.append(f"| {name} | {s.n} | {fmt(s.p50)} | {fmt(s.p95)} | {fmt(s.lo)}–{fmt(s.hi)} |")
    return "\n".join(lines)


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse ``type`` that accepts only numbers above 0 (NaN refused too)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """Run the clients; print the table (or JSON). Exits 1 on any error or when nothing was screened, 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the API's base URL (the stack's ApiUrl output)")
    parser.add_argument(
        "--api-key",
        help=f"the x-api-key value (aws apigateway get-api-key --include-value); default: ${API_KEY_ENV}",
    )
    parser.add_argument("--clients", type=_positive(int), default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=_positive(int), default=200, help="requests in all (default 200)")
    parser.add_argument("--seconds", type=_positive(float), default=60.0, help="time limit (default 60)")
    parser.add_argument("--photo", default="small", help="small, phone, or the path of a photo of your own")
    parser.add_argument("--json", action="store_true", help="print the raw result as one JSON line")
    args = parser.parse_args(argv)
    # Read here, not as the argparse default, so --help never shows the key.
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        result = run_load(
            args.url,
            photo_for(args.photo),
            clients=args.clients,
            total=args.requests,
            seconds=args.seconds,
            api_key=api_key,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print(report(result, args.clients))
        for error in result.first_errors:
            print(error, file=sys.stderr)
    if result.interrupted:
        return 130  # the shell's code for a run stopped by SIGINT
    if not result.ok:
        print(
            f"http_load: no request was screened ({result.requests} sent: {result.throttled} throttled (429), "
            f"{result.errors} errors)",
            file=sys.stderr,
        )
        return 1
    if result.errors:
        print(f"http_load: {result.errors} of {result.requests} answers were errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
