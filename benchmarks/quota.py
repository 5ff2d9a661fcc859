"""Lambda's CPU share, emulated: the handler under a CFS CPU quota, with one ORT thread and with two.

Lambda gives a function CPU in proportion to its memory (one vCPU's worth at 1,769 MB) while it sees
two vCPUs, so a short burst may run on both and sustained use beyond the share is throttled. Here a
cgroup whose CPU quota is ``memory / 1769`` of a CPU per 100 ms period stands in for that. Lambda does
not publish its own period or mechanism: this approximates Lambda, it is not Lambda. It needs root and
a writable cgroup CPU controller (v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``); without them the section
says why and is left out.

    .venv/bin/python -m benchmarks.quota            # the table alone
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import BUNDLED_MODEL_DIR, Stats, fmt, json_from_child

MEMORY_SIZES = (1769, 2048, 3538)  # one vCPU's worth; the template's default; two vCPUs' worth
ONE_VCPU_MB = 1769
PERIOD_US = 100_000
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
MODES = {"back to back": 0.0, "10 ms apart": 0.01}
THREADS = (1, 2)


class QuotaUnavailable(RuntimeError):
    """No cgroup CPU controller this process may configure."""


@contextlib.contextmanager
def cpu_quota(memory_mb: int) -> Iterator[Path]:
    """A cgroup limited to Lambda's CPU share at ``memory_mb``; yields its ``cgroup.procs`` file."""
    share = memory_mb / ONE_VCPU_MB
    quota_us = round(share * PERIOD_US)
    name = f"cataract-bench-{memory_mb}mb-{os.getpid()}"
    try:
        controllers = (CGROUP_V2 / "cgroup.controllers").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        controllers = []  # no cgroup v2 here (or not readable): v1 below, or nothing
    if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        group = CGROUP_V1 / name
        settings = {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota_us)}
    elif "cpu" in controllers:
        group = CGROUP_V2 / name
        settings = {"cpu.max": f"{quota_us} {PERIOD_US}"}
    else:
        raise QuotaUnavailable("no cgroup CPU controller is mounted")
    try:
        group.mkdir()
        for key, value in settings.items():
            (group / key).write_text(value, encoding="ascii")
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        raise QuotaUnavailable(f"cannot configure {group}: {exc} (root and a writable cgroup are needed)") from exc
    try:
        yield group / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


CANNOT_JOIN = 3  # the child's exit code when it may not join the group


def measure_in_quota(memory_mb: int, model_dir: Path, rounds: int, per_block: int) -> dict[str, list[float]]:
    """Run ``--child`` inside a quota for ``memory_mb``: samples keyed ``photo|mode|threads``.

    A child that may not join the group (writing ``cgroup.procs`` needs more than creating it) raises
    ``QuotaUnavailable``, so the caller reports the section as not measured. Any other failure of the child is a
    failure of the benchmark, and is raised as it is.
    """
    with cpu_quota(memory_mb) as procs:
        try:
            return json_from_child(
                "benchmarks.quota", "--child", str(procs), "--model", str(model_dir),
                "--rounds", str(rounds), "--per-block", str(per_block),
            )  # fmt: skip
        except RuntimeError as exc:
            if f"failed ({CANNOT_JOIN})" not in str(exc):
                raise
            last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
            raise QuotaUnavailable(f"the measuring child cannot join the group at {memory_mb} MB: {last[0]}") from exc


def compare(model_dir: Path, rounds: int, per_block: int) -> dict[int, dict[str, list[float]]]:
    """Samples per memory size (see ``measure_in_quota``). Raises ``QuotaUnavailable`` where it cannot run.

    The sizes take turns, one round each in a child of its own, ``rounds`` times over: each size in one child, one
    after the other, left the machine's drift between them (13% between sizes in one run, in no order) to be read as
    the CPU share's effect.
    """
    results: dict[int, dict[str, list[float]]] = {mb: {} for mb in MEMORY_SIZES}
    for _ in range(rounds):
        for mb in MEMORY_SIZES:
            for key, values in measure_in_quota(mb, model_dir, 1, per_block).items():
                results[mb].setdefault(key, []).extend(values)
    return results


BASELINE_MB = 2048  # the template's default


def table(results: dict[int, dict[str, list[float]]]) -> str:
    """Markdown: one row per memory size, photo, traffic pattern and thread count, with its p50 against the same
    photo, traffic and threads at the template's default size."""
    lines = [
        "| memory (CPU share) | photo | requests | ORT threads | n | p50 ms | p95 ms | min–max ms | p50 ÷ 2048 MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = results.get(BASELINE_MB, {})
    for mb, samples in results.items():
        for key, values in samples.items():
            photo, mode, threads = key.split("|")
            s = Stats.of(values)
            ratio = f"{s.p50 / Stats.of(baseline[key]).p50:.2f}×" if baseline.get(key) else "–"
            lines.append(
                f"| {mb} MB ({mb / ONE_VCPU_MB:.2f} vCPU) | {photo} | {mode} | {threads} | {s.n} | "
                f"{fmt(s.p50)} | {fmt(s.p95)} | {fmt(s.lo)}–{fmt(s.hi)} | {ratio} |"
            )
    return "\n".join(lines)


def _child(procs: Path, model_dir: Path, rounds: int, per_block: int) -> None:
    # Join the quota first: every thread started from here on (ORT's pool among them) shares it.
    try:
        procs.write_text(str(os.getpid()), encoding="ascii")
    except OSError as exc:
        print(f"cannot join {procs}: {exc}", file=sys.stderr)
        sys.exit(CANNOT_JOIN)
    from benchmarks.common import in_blocks, phone_photo, small_photo
    from benchmarks.latency import handler_factory
    from cataract_inference import events

    out: dict[str, list[float]] = {}
    for photo, data in (("small", small_photo()), ("phone", phone_photo())):
        event = events.predict_event(data)
        for mode, pause in MODES.items():
            samples = in_blocks(
                {str(t): handler_factory(model_dir, t, event) for t in THREADS},
                rounds,
                per_block,
                pause_s=pause,
            )
            out.update({f"{photo}|{mode}|{t}": v for t, v in samples.items()})
    print(json.dumps(out))


def main() -> None:
    """The quota table on the bundled model, or the measuring child (``--child``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, metavar="CGROUP_PROCS", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-block", type=int, default=40)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.model, args.rounds, args.per_block)
        return
    try:
        print(table(compare(args.model, args.rounds, args.per_block)))
    except QuotaUnavailable as exc:
        sys.exit(f"cannot emulate Lambda's CPU share here: {exc}")


if __name__ == "__main__":
    main()
