"""Run every benchmark, print markdown tables, write benchmarks/results/latest.md (a full run; partial.md otherwise).

    .venv/bin/python -m benchmarks.run [--quick] [--model DIR] [--skip deps,coldstart,...] [--output FILE]

Each comparison runs its candidates in this one process (or, for cold start and throughput, from
this process against fresh subprocesses), interleaved, on the same machine; tables give p50, p95,
min–max and ratios against the baseline measured alongside.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import coldstart, depsize, hostile, int8, latency, quota, throughput, tuning
from benchmarks.common import (
    REPO,
    RESULTS,
    SAME_WORK_BAND,
    SHARED_TRAIN,
    ModelChoice,
    Stats,
    choose_model,
    downscaled,
    faster_verdict,
    fmt,
    int8_variant,
    json_from_child,
    latency_table,
    phone_photo,
    quiet_environment,
    run_backbone,
    run_size,
    same_work_disagrees,
    shown,
    small_photo,
    torch_target,
    verdict,
)

SECTIONS = (
    "latency",
    "reference",
    "torch",
    "int8",
    "tuning",
    "quota",
    "coldstart",
    "memory",
    "hostile",
    "deps",
    "throughput",
)

Row = tuple[str, str, str, str]  # a target row: what, target, measured, verdict


@dataclass
class Progress:
    """What a run has produced so far: the report's text, target rows by section, why a section's targets went
    unmeasured, and the sections begun (the last one is the one running)."""

    out: list[str] = field(default_factory=list)
    targets: dict[str, list[Row]] = field(default_factory=lambda: {section: [] for section in SECTIONS})
    unmeasured: dict[str, str] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def emit(self, text: str = "") -> None:
        """Print ``text`` and keep it for the report."""
        print(text, flush=True)
        self.out.append(text)


def section_targets(small: str, phone: str) -> dict[str, dict[str, str]]:
    """Every target row each section reports (what → target), so one skipped or not measured still shows its rows,
    marked "not measured", and a partial report cannot pass for the full set."""
    both = (small, phone)
    return {
        "latency": {f"handler ÷ bare, {small}": "≤ 1.2×", f"handler ÷ bare, {phone}": "≤ 2.0×"},
        "reference": {
            what: target
            for name in both
            for what, target in (
                (f"reference-style ÷ ours, {name}", "> 1× (ours faster)"),
                (f"reference-style (1 thread, as on 1 vCPU) ÷ ours, {name}", "> 1×"),
            )
        }
        | {f"reference-style ÷ ours, both 2 threads, {name}": "> 1×" for name in both},
        "torch": {
            what: "≥ 3×"
            for name in both
            for what in (
                f"torch forward ÷ ORT run, {name}",
                f"torch app (full decode) ÷ our handler (draft decode), {name}",
            )
        },
        "int8": {"int8 speed-up over fp32": "≥ 1.5×", "int8 accuracy loss on validation": "≤ 1 point"},
        "coldstart": {
            "cold start, tracing off": "≤ 1500 ms",
            "cold start, tracing on": "≤ 1500 ms",
            "cold start, model from S3 (loopback)": "≤ 1500 ms",
            "cold start ours ÷ PyTorch": "≤ 0.2",
        },
        "memory": {"peak RSS after 1,000 requests": "≤ 350 MB", "RSS growth after warm-up": "≤ 10 MB"},
        "deps": {"installed runtime dependencies": "≤ 250 MB"},
        "throughput": {"serve, 4 clients": "zero errors"},
    }


def summary_rows(
    targets: dict[str, list[Row]], expected: dict[str, dict[str, str]], unmeasured: dict[str, str]
) -> list[Row]:
    """The targets table in section order: each expected row as measured, or "not measured" with the reason
    ``unmeasured`` gives for its section; then any measured row the table does not list."""
    rows: list[Row] = []
    for section in SECTIONS:
        measured = {row[0]: row for row in targets.get(section, [])}
        why = unmeasured.get(section, "not measured")
        for what, target in expected.get(section, {}).items():
            rows.append(measured.pop(what, (what, target, "not measured", why)))
        rows.extend(measured.values())
    return rows


def mode_line(quick: bool, skip: set[str], failure: str | None, unmeasured: dict[str, str] | None = None) -> str:
    """The report's first line: a full run, or what makes this one partial (``unmeasured``: sections left unmeasured
    by this machine, such as int8 without an export, each with its reason)."""
    parts = []
    if quick:
        parts.append("`--quick` (fewer repeats)")
    if skip:
        parts.append("sections skipped: " + ", ".join(s for s in SECTIONS if s in skip))
    if unmeasured:
        parts.append("not measured here: " + "; ".join(f"{s} ({why})" for s, why in unmeasured.items()))
    if failure:
        parts.append(f"stopped early: {failure}; it and the sections after it were not measured")
    return "_Partial run, not the full set: " + "; ".join(parts) + "._" if parts else "_Full run: every section._"


def run_kind(quick: bool, skip: set[str], failure: str | None, unmeasured: dict[str, str]) -> tuple[bool, str]:
    """Whether a run is partial, and its mode line. Sections this machine left unmeasured (not by ``--skip`` or a
    failure: int8 without an export, torch without a matching network, quota without a cgroup) make it partial too:
    only a run that measured everything is the full set."""
    missing = {} if failure else {s: why for s, why in unmeasured.items() if s not in skip}
    partial = quick or bool(skip) or failure is not None or bool(missing)
    return partial, mode_line(quick, skip, failure, missing)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores (shared; load average {load[0]:.1f} at start), Python "
        f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}"
    )


def _provenance(model_dir: Path) -> str:
    """The commit measured (with "+ changes" when the tree differs) and the manifest's own sha256."""
    import hashlib
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit = head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (not a git checkout)"
    manifest = model_dir / "model.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.is_file() else "none"
    return f"Commit {commit}; model.json sha256 {digest}… (its gate thresholds are part of what is measured)."


def _torch_build() -> str:
    """torch's version and whether it is a CUDA build, without importing it in this process."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"
    # The CUDA wheels pull in nvidia-* packages; torch's own metadata version does not say which build it is.
    cuda = any((d.metadata["Name"] or "").lower().startswith("nvidia-") for d in metadata.distributions())
    return f"torch {version}" + (" (a CUDA build)" if cuda else " (CPU-only)")


def int8_section(
    pair: int8.Pair,
    photo: bytes,
    reps: int,
    emit: Callable[[str], None],
    targets: list[Row],
    *,
    unmeasured: dict[str, str],
    whose: str = "",
) -> None:
    """int8 against fp32 from the same export: latency in this process, validation accuracy, head drift.
    What it cannot measure here goes into ``unmeasured``, which makes the run partial. ``whose``, when the pair is
    not the measured model's own export, follows each measured value in the Targets table (as each row is added,
    so a section that fails half way still says it)."""
    from cataract_inference.imaging import load_for_model
    from cataract_inference.manifest import load_manifest

    fp32_dir, int8_dir = pair.fp32, pair.int8
    emit(pair.origin)
    emit("Both with serving's `session_options(1)` (ENABLE_ALL, one intra-op thread, no spinning), interleaved.")
    emit("")
    tensor = load_for_model(photo, load_manifest(fp32_dir / "model.json").input)[1][None]
    samples = int8.latency(fp32_dir, int8_dir, tensor, reps)
    emit(latency_table(samples, "fp32 session.run"))
    emit("")
    speed = latency.ratio(samples, "fp32 session.run", "int8 session.run")
    targets.append(("int8 speed-up over fp32", "≥ 1.5×", f"{shown(speed, 1.5)}×{whose}", verdict(speed >= 1.5)))
    if not (SHARED_TRAIN.is_dir() and pair.split is not None and pair.split.is_file()):
        emit(f"_Accuracy rows skipped: {SHARED_TRAIN} or the run's split.json is absent._")
        emit("")
        why = "not measured: no validation photos (the data or the run's split.json is absent)"
        targets.append(("int8 accuracy loss on validation", "≤ 1 point", "not measured", why))
        unmeasured["int8"] = why  # not a failed target: a run that could not judge it is not the full set
        return
    val = int8.validation({"fp32": fp32_dir, "int8": int8_dir}, pair.split, SHARED_TRAIN)
    emit("| variant | validation photos | accuracy | sensitivity (cataracts found) |")
    emit("|---|---:|---:|---:|")
    for k, v in val.items():
        emit(f"| {k} | {v['n']} | {v['accuracy']:.1f}% | {v['sensitivity']:.1f}% of {v['positives']} |")
    emit("")
    emit("| int8 drift from fp32 on validation | value |")
    emit("|---|---:|")
    for k, drift in int8.drift(val["fp32"]["outputs"], val["int8"]["outputs"]).items():
        emit(f"| {k} | {drift:.3f} |")
    emit("")
    delta = val["fp32"]["accuracy"] - val["int8"]["accuracy"]
    lost = val["fp32"]["sensitivity"] - val["int8"]["sensitivity"]
    sign = "+" if delta >= 0 else ""
    text = f"{sign}{shown(delta, 1.0, 1)} points (fp32 − int8); sensitivity {lost:+.1f}{whose}"
    targets.append(("int8 accuracy loss on validation", "≤ 1 point", text, verdict(delta <= 1.0)))
    emit(
        "The same validation photos shifted as photos from other sources may be (a stand-in: no such photos are "
        "here), each variant at its own threshold:"
    )
    emit("")
    emit("| shift | photos | fp32 accuracy | int8 accuracy | decisions that differ | max probability change |")
    emit("|---|---:|---:|---:|---:|---:|")
    for name, shift in int8.shifts().items():
        moved = int8.validation({"fp32": fp32_dir, "int8": int8_dir}, pair.split, SHARED_TRAIN, shift)
        a = int8.agreement(moved["fp32"], moved["int8"])
        emit(
            f"| {name} | {a['n']:.0f} | {a['fp32 accuracy']:.1f}% | {a['int8 accuracy']:.1f}% "
            f"| {a['decisions that differ']:.0f} | {a['max probability change']:.3f} |"
        )
    emit("")


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and write the report (also when a section fails: what was measured by then)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled model, else a proxy)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    parser.add_argument(
        "--output", type=Path, help="report file (default: results/latest.md for a full run, else results/partial.md)"
    )
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted(skip - set(SECTIONS))
    if unknown:  # a typo would otherwise run the section it meant to skip
        parser.error(f"--skip: unknown section(s) {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    quiet_environment()

    progress = Progress(unmeasured={section: "skipped (--skip)" for section in SECTIONS if section in skip})
    emit = progress.emit
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    model = choose_model(args.model, scratch)
    photos = {"small photo (320×240 JPEG)": small_photo(), "phone photo (3000×2000 JPEG)": phone_photo()}
    small_key, phone_key = list(photos)
    emit(f"_Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {_machine()}._  ")
    emit(
        f"_Model: {model.description}. Photos: drawn eyes with noise, JPEG q90 "
        f"({len(photos[small_key]) // 1024} KB and {len(photos[phone_key]) // 1024} KB)._  "
    )
    emit(f"_{_provenance(model.directory)}_  ")
    emit(
        "_Powertools as the local runner sets it (tracing off, metrics off, log level WARNING). Deployed, each "
        "request also writes INFO log lines and one EMF metrics line: about 2% more handler time in one "
        "measurement._"
    )
    emit()

    failure: str | None = None
    try:
        _measure(args, skip, model=model, photos=photos, scratch=scratch, progress=progress)
    except BaseException as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        failed = progress.started[-1] if progress.started else None
        failure = f"{f'section `{failed}`' if failed else 'the setup'} failed ({type(exc).__name__}: {first_line})"
        rest = SECTIONS[SECTIONS.index(failed) :] if failed else SECTIONS
        progress.unmeasured.update(
            {section: "not measured: the run stopped" for section in rest if section not in skip}
        )
        emit()
        emit(f"_Stopped: {failure}._")
        raise
    finally:
        summary = ["| what | target | measured | |", "|---|---|---|---|"]
        rows = summary_rows(progress.targets, section_targets(small_key, phone_key), progress.unmeasured)
        summary += [f"| {w} | {t} | {m} | {v} |" for w, t, m, v in rows]
        print("\n### Targets\n\n" + "\n".join(summary))
        partial, head = run_kind(args.quick, skip, failure, progress.unmeasured)
        # latest.md is the full set the README quotes: a partial run goes elsewhere unless told where.
        output: Path = args.output or RESULTS / ("partial.md" if partial else "latest.md")
        output.parent.mkdir(parents=True, exist_ok=True)
        report = ["## Benchmark results", "", head, "", "### Targets", "", *summary]
        output.write_text("\n".join([*report, "", *progress.out]) + "\n", encoding="utf-8")
        note = " (a partial run: not latest.md, which holds the full set)" if partial and args.output is None else ""
        print(f"\nwrote {output}{note}", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)  # photos, hostile images, a proxy or int8 model: megabytes a run
    return 0


def _measure(
    args: argparse.Namespace,
    skip: set[str],
    *,
    model: ModelChoice,
    photos: dict[str, bytes],
    scratch: Path,
    progress: Progress,
) -> None:
    """The sections not in ``skip``, in order, each recording into ``progress`` as it goes."""
    emit, targets, unmeasured, started = progress.emit, progress.targets, progress.unmeasured, progress.started
    reps = 30 if args.quick else 100
    small_key, phone_key = list(photos)
    handler = latency.load_handler(model.directory, threads=1)

    if "latency" not in skip:
        started.append("latency")
        emit("### Warm latency through the Lambda handler (one ORT thread) vs bare `session.run`")
        emit()
        for name, samples in latency.handler_breakdown(handler, photos, reps).items():
            emit(f"**{name}**")
            emit()
            emit(latency_table(samples, "bare session.run", {"handler": "base64 event in, JSON out"}))
            emit()
            r = latency.ratio(samples, "handler", "bare session.run")
            limit = 1.2 if name == small_key else 2.0
            targets["latency"].append(
                (f"handler ÷ bare, {name}", f"≤ {limit}×", f"{shown(r, limit)}×", verdict(r <= limit))
            )
        emit(
            "**The phone photo downscaled by the client before upload** (handler, base64 in; the web page sends "
            "a photo over 2048 px or 3 MiB at 2048 px)"
        )
        emit()
        samples = latency.client_downscaling(handler, photos[phone_key], (2048, 1600, 1024), reps)
        emit(latency_table(samples, next(iter(samples))))
        emit()
        emit("### The heat map (`explain=true`, as the web page asks)")
        emit()
        explained = photos | {
            "12 MP phone photo (4032×3024 JPEG: the model's ⅛ draft, 504 px, is drawn on)": phone_photo(
                size=(4032, 3024)
            ),
            "phone photo downscaled to 1024 px": downscaled(photos[phone_key], 1024),
            "the same as PNG (the overlay reuses the model's full-size decode)": downscaled(
                photos[phone_key], 1024, fmt="PNG"
            ),
        }
        for name, samples in latency.explain_cost(handler, explained, reps).items():
            emit(f"**{name}**")
            emit()
            emit(latency_table(samples, "handler"))
            emit()

    if "reference" not in skip:
        started.append("reference")
        emit("### Against the reference project's serving (FastAPI, default `InferenceSession`, PIL resize)")
        emit()
        emit(
            "Both behind Mangum, same API Gateway event; the reference decodes the full image and calls "
            "`img.resize((224, 224))`, with ORT's default session options (all cores, spinning)."
        )
        emit()
        for name, samples in latency.versus_reference(handler, photos, max(20, reps // 2)).items():
            emit(f"**{name}**")
            emit()
            emit(latency_table(samples, "our handler"))
            emit()
            r = latency.ratio(samples, "reference-style app", "our handler")
            targets["reference"].append(
                (f"reference-style ÷ ours, {name}", "> 1× (ours faster)", f"{fmt(r)}×", faster_verdict(r))
            )
            r1 = latency.ratio(samples, "reference-style app, 1 ORT thread", "our handler")
            targets["reference"].append(
                (f"reference-style (1 thread, as on 1 vCPU) ÷ ours, {name}", "> 1×", f"{fmt(r1)}×", faster_verdict(r1))
            )

        emit("### Two ORT threads each (`ORT_INTRA_OP_THREADS=2`, for functions with two vCPUs)")
        emit()
        emit(
            "Blocks of 10 calls per candidate and round, each block on a freshly built app, so only one thread pool "
            "is alive at a time (two spinning pools on 2 cores slow each other 2–3×)."
        )
        emit()
        for name, samples in latency.at_two_threads(model.directory, photos, 3 if args.quick else 6).items():
            emit(f"**{name}**")
            emit()
            baseline = "our handler, 2 threads (ORT_INTRA_OP_THREADS=2: helpers spin)"
            emit(latency_table(samples, baseline))
            emit()
            r2 = latency.ratio(samples, "reference-style app (2 threads, ORT's default spinning)", baseline)
            targets["reference"].append(
                (f"reference-style ÷ ours, both 2 threads, {name}", "> 1×", f"{fmt(r2)}×", faster_verdict(r2))
            )

    # The PyTorch network that stands for the measured model, from its model.json (never the newest run as such);
    # found when a section first needs it, as it imports torch.
    torch_net = functools.cache(functools.partial(torch_target, model.directory))

    if "torch" not in skip:
        started.append("torch")
        emit("### Against PyTorch eager (one thread each)")
        emit()
        target = torch_net()
        if target.refused or target.backbone is None:
            emit(f"_Not measured: {target.refused}._")
            emit()
            unmeasured["torch"] = "not measured: no PyTorch network matches the model"
        else:
            tables, _ = latency.versus_torch(handler, photos, target.run, max(20, reps // 3), target.backbone)
            emit(
                f"PyTorch: the training network, {target.describe()}, for the measured model ({model.description}); "
                "`torch.inference_mode()`, 1 thread."
            )
            emit()
            ort_p50s = {name: Stats.of(samples["ORT session.run"]).p50 for name, samples in tables.items()}
            # Every photo reaches ORT as a tensor of one shape, and a run's time does not depend on the values.
            disturbed = same_work_disagrees(list(ort_p50s.values()))
            for name, samples in tables.items():
                emit(f"**{name}**")
                emit()
                emit(latency_table(samples, "ORT session.run"))
                emit()
                r = latency.ratio(samples, "torch eager forward", "ORT session.run")
                r2 = latency.ratio(samples, "torch photo→probabilities", "our handler")
                cell = f"{shown(r, 3.0)}×" + (" (section disturbed)" if disturbed else "")
                targets["torch"].append((f"torch forward ÷ ORT run, {name}", "≥ 3×", cell, verdict(r >= 3.0)))
                # Not a framework comparison: the torch app decodes the full JPEG, ours a reduced draft.
                targets["torch"].append(
                    (
                        f"torch app (full decode) ÷ our handler (draft decode), {name}",
                        "≥ 3×",
                        f"{shown(r2, 3.0)}×" + (" (section disturbed)" if disturbed else ""),
                        verdict(r2 >= 3.0),
                    )
                )
            if disturbed:
                apart = " and ".join(f"{fmt(v)} ms ({k})" for k, v in ort_p50s.items())
                emit(
                    f"_Disturbed: ORT's `session.run` took {apart} at p50 on input tensors of one shape, more than "
                    f"{SAME_WORK_BAND:.0%} apart; this section's ratios say as much about the machine as the code._"
                )
                emit()

    if "int8" not in skip:
        started.append("int8")
        emit("### int8 against fp32")
        emit()
        pair = int8_variant(model_dir=model.directory)
        export_run = pair[0].parents[1] if pair else None
        trained = run_backbone(export_run) if export_run else None
        wanted = torch_net().backbone or "of an unknown backbone"
        if pair is None or export_run is None:
            try:
                rebuilt = int8.rebuild(model.directory, SHARED_TRAIN, scratch / "int8-rebuild")
            except int8.CannotRebuild as exc:
                emit(
                    "_Skipped: no run folder under runs/ has export/fp32 and export/int8 (run `cataract-train export`),"
                    f" and none can be rebuilt here: {exc}._"
                )
                unmeasured["int8"] = "not measured: no run with an int8 export, and none rebuilt here"
                emit()
            else:
                # The Targets table says so too: not the export's own int8 file, a rebuild by the same recipe.
                int8_section(
                    rebuilt,
                    photos[small_key],
                    reps,
                    emit,
                    targets["int8"],
                    unmeasured=unmeasured,
                    whose=" (int8 rebuilt here)",
                )
        elif trained != wanted or run_size(export_run) != torch_net().size:
            # Without the model's own run here, the newest export may be another network's: not this model's speed.
            emit(
                f"_Not measured: the export found, of run `{export_run.name}`, is {trained or 'of an unknown backbone'}"
                f" at {run_size(export_run)} px, but the measured model is {wanted} at {torch_net().size} px._"
            )
            unmeasured["int8"] = "not measured: the only export is another network's"
            emit()
        else:
            own = torch_net().run == export_run
            whose = "the measured model's own run" if own else f"not the measured model's run, another {trained} run"
            emit(f"Run `{export_run.name}`: {whose}.")
            emit()
            int8_section(
                int8.from_export(*pair),
                photos[small_key],
                reps,
                emit,
                targets["int8"],
                unmeasured=unmeasured,
                whose="" if own else f" (run {export_run.name})",  # the Targets table says so too
            )

    if "tuning" not in skip:
        started.append("tuning")
        emit("### ONNX Runtime settings (bare `session.run`, same tensor)")
        emit()
        runs, creation = tuning.compare(handler.classifier.artifact.model_path, reps)
        emit(latency_table(runs, "serving: 1 thread, ENABLE_ALL, no spin"))
        emit()
        emit("| session creation (cold-start share) | n | p50 ms | min–max ms |")
        emit("|---|---:|---:|---:|")
        for k, v in creation.items():
            made = Stats.of(v)
            emit(f"| {k} | {made.n} | {fmt(made.p50, 1)} | {fmt(made.lo, 1)}–{fmt(made.hi, 1)} |")
        emit()

    if "quota" not in skip:
        started.append("quota")
        emit("### Lambda's CPU share, emulated: a CFS quota of memory ÷ 1769 vCPU per 100 ms, one ORT thread or two")
        emit()
        try:
            shares = quota.compare(model.directory, 2 if args.quick else 4, 20 if args.quick else 40)
        except quota.QuotaUnavailable as exc:
            emit(f"Not measured here: {exc}.")
            unmeasured["quota"] = f"not measured: {exc}"
        else:
            emit(
                "The handler in a child process inside a cgroup whose CPU quota is Lambda's share at that memory "
                "size (it still sees every core, as a function sees two vCPUs). Lambda's own throttling period is "
                "not published; 100 ms is the kernel's default. Blocks of calls per thread count, back to back "
                "(sustained traffic) or 10 ms apart. The memory sizes take turns, a round each in a child of its own."
            )
            emit()
            emit(quota.table(shares))
        emit()

    if "coldstart" not in skip:
        started.append("coldstart")
        emit("### Cold start: new process to first response, through awslambdaric and the Runtime API stub")
        emit()
        target = torch_net()
        net = None if target.refused else target
        samples = coldstart.compare(model.directory, net, photos[small_key], 3 if args.quick else 7)
        emit(
            "Each candidate's process is new, but the files it reads are in the page cache: a first, untimed round "
            "reads them from disk. A new Lambda environment may read its image's files from storage instead, which "
            "this leaves out (and which weighs more on a handler that loads more library bytes)."
        )
        emit()
        if net is None:
            emit(f"_No PyTorch handler: {target.refused}._")
        else:
            emit(
                f"The PyTorch handler builds {net.describe()} and imports the torch installed here, {_torch_build()}: "
                "a CUDA build loads its CUDA libraries at import (about 0.1 s here), which a CPU-only build on Lambda "
                "would not."
            )
        emit()
        emit(latency_table(samples, "our handler (tracing off)"))
        emit()
        ours = Stats.of(samples["our handler (tracing off)"]).p50
        traced = Stats.of(samples["our handler (tracing on, X-Ray SDK)"]).p50
        cold = targets["coldstart"]
        cold.append(("cold start, tracing off", "≤ 1500 ms", f"{shown(ours, 1500, 0)} ms", verdict(ours <= 1500)))
        cold.append(("cold start, tracing on", "≤ 1500 ms", f"{shown(traced, 1500, 0)} ms", verdict(traced <= 1500)))
        from_s3 = Stats.of(samples[coldstart.S3_CANDIDATE]).p50
        cold.append(
            (
                "cold start, model from S3 (loopback)",
                "≤ 1500 ms",
                f"{shown(from_s3, 1500, 0)} ms",
                verdict(from_s3 <= 1500),
            )
        )
        if "PyTorch handler" in samples:
            share = ours / Stats.of(samples["PyTorch handler"]).p50
            cold.append(("cold start ours ÷ PyTorch", "≤ 0.2", shown(share, 0.2), verdict(share <= 0.2)))
        else:
            unmeasured["coldstart"] = "not measured: no PyTorch network matches the model"

    if "memory" not in skip:
        started.append("memory")
        emit("### Memory: 1,000 warm requests in a fresh process (small, phone, explain and bad requests mixed)")
        emit()
        (scratch / "small.jpg").write_bytes(photos[small_key])
        (scratch / "phone.jpg").write_bytes(photos[phone_key])
        mem = json_from_child(
            "benchmarks.memory", str(model.directory), str(scratch / "small.jpg"), str(scratch / "phone.jpg")
        )
        emit("| RSS after init | after 100 (warm) | after 1,000 | peak | growth after warm-up | statuses |")
        emit("|---:|---:|---:|---:|---:|---|")
        emit(
            f"| {mem['rss_init_mb']} MB | {mem['rss_warm_mb']} MB | {mem['rss_end_mb']} MB | {mem['peak_mb']} MB | "
            f"{mem['growth_after_warm_up_mb']} MB | {mem['statuses']} |"
        )
        emit()
        peak, growth = mem["peak_bytes"] / 1e6, mem["growth_after_warm_up_bytes"] / 1e6
        targets["memory"].append(
            ("peak RSS after 1,000 requests", "≤ 350 MB", f"{shown(peak, 350, 1)} MB", verdict(peak <= 350))
        )
        targets["memory"].append(
            ("RSS growth after warm-up", "≤ 10 MB", f"{shown(growth, 10, 1)} MB", verdict(growth <= 10))
        )

    if "hostile" not in skip:
        started.append("hostile")
        emit("### Hostile images: one request each in a fresh process (after one small warm-up request)")
        emit()
        emit(
            f"40 MP ({hostile.SIDE}×{hostile.SIDE}, the default pixel limit) in each layout the decoder converts, "
            "and two CPU bombs' shapes. Peak is the process's VmHWM; the function needs it under `MemorySize`, "
            "whose MB are MiB (2^20 bytes), as here."
        )
        emit()
        emit("| image | file KiB | status | ms | peak RSS MiB | peak ÷ reference |")
        emit("|---|---:|---|---:|---:|---:|")
        rows = {
            name: json_from_child("benchmarks.hostile", str(model.directory), str(path), media)
            for name, (path, media) in hostile.write_images(scratch).items()
        }
        reference = rows[hostile.REFERENCE]["peak_mb"]
        for name, row in rows.items():
            emit(
                f"| {name} | {row['bytes'] / 1024:.0f} | {row['status']} {row['code']} | {row['ms']:.0f} | "
                f"{row['peak_mb']:.0f} | {row['peak_mb'] / reference:.2f}× |"
            )
        emit()

    if "deps" not in skip:
        started.append("deps")
        emit("### Installed runtime dependencies (`pip install --target`, Python 3.12 manylinux x86_64 wheels)")
        emit()
        total, groups = depsize.measure()
        emit("| package folder | MB |")
        emit("|---|---:|")
        for name, size in groups[:10]:
            emit(f"| {name} | {size / 1e6:.1f} |")
        emit(f"| **total** | **{total / 1e6:.1f}** |")
        emit()
        boto = sum(size for name, size in groups if name in ("botocore", "boto3", "s3transfer"))
        emit(
            f"boto3, botocore and s3transfer: {boto / 1e6:.1f} MB (aws-xray-sdk pulls in botocore, which shadows the "
            "base image's; boto3 is pinned beside it so the pair is the one the tests use)."
        )
        emit()
        mb = total / 1e6
        targets["deps"].append(
            ("installed runtime dependencies", "≤ 250 MB", f"{shown(mb, 250, 1)} MB", verdict(mb <= 250))
        )

    if "throughput" not in skip:
        started.append("throughput")
        emit("### `serve` throughput: 4 concurrent clients in a second process, loopback, small photo")
        emit()
        n = 100 if args.quick else 400
        res = throughput.measure(model.directory, total=n, seconds=60.0)
        s = Stats.of(res["latencies_ms_by_kind"].get("200", []))  # screenings only: a fast error is no answer
        rps = res["requests"] / res["wall_s"]
        failed = res["errors"] + res["throttled"]  # serve never throttles: a 429 here is a failure too
        emit("| requests | errors | wall s | requests/s | p50 ms | p95 ms | min–max ms |")
        emit("|---:|---:|---:|---:|---:|---:|---:|")
        emit(
            f"| {res['requests']} | {failed} | {res['wall_s']:.1f} | {rps:.1f} | {fmt(s.p50)} | {fmt(s.p95)} | "
            f"{fmt(s.lo)}–{fmt(s.hi)} |"
        )
        emit()
        targets["throughput"].append(
            ("serve, 4 clients", "zero errors", f"{rps:.1f} req/s, {failed} errors", verdict(failed == 0))
        )


if __name__ == "__main__":
    raise SystemExit(main())
