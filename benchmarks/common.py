"""Shared pieces of the benchmarks: timing statistics, markdown tables, the photos, and which model to measure.

Every comparison runs its candidates in one process, interleaved round-robin, so the noise of a
shared machine (other jobs, frequency scaling) lands on all of them alike; tables report ratios.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL_DIR = REPO / "functions" / "inference" / "model"
RUNS_DIR = REPO / "runs"
SHARED_TRAIN = REPO.parent / "shared" / "data" / "cataract-eyes" / "train"
RESULTS = Path(__file__).resolve().parent / "results"

# Quiet, local Powertools, as the runtime-client tests run it.
QUIET_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "CataractScreeningBench",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def quiet_environment() -> None:
    """Set the Powertools environment before anything imports the handler."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # Metrics are disabled here, so every flush would warn that there is nothing to publish.
    warnings.filterwarnings("ignore", message="No application metrics to publish")


# Under 20 samples a nearest-rank p95 is only the largest of them: it is not reported (the max is).
MIN_FOR_P95 = 20


@dataclass(frozen=True)
class Stats:
    """Summary of a list of durations in milliseconds."""

    n: int
    p50: float
    p95: float
    lo: float
    hi: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Stats:
        """Percentiles of ``samples_ms`` (nearest-rank p95; NaN, shown n/a, under ``MIN_FOR_P95`` samples)."""
        data = sorted(samples_ms)
        if not data:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        p95 = data[math.ceil(0.95 * len(data)) - 1] if len(data) >= MIN_FOR_P95 else float("nan")
        return cls(len(data), statistics.median(data), p95, data[0], data[-1])


def interleaved(
    candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3, pause_s: float = 0.0
) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times, round-robin, after ``warmup`` untimed calls each; ms per call.

    ``pause_s`` sleeps (untimed) before each call, so threads a candidate leaves spinning (ORT's default
    pool) are parked again before the next candidate is timed, instead of stealing its CPU.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if pause_s:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1000.0)
    return samples


def in_blocks(
    factories: dict[str, Callable[[], Callable[[], Any]]],
    rounds: int,
    per_block: int,
    warmup: int = 3,
    pause_s: float = 0.01,
) -> dict[str, list[float]]:
    """Like ``interleaved``, but a block of ``per_block`` calls per candidate and round, each block on a fresh
    candidate built by its factory and dropped after it.

    For candidates that own a spinning thread pool: with only one pool alive at a time, none steals the
    cores of another (two spinning 2-thread pools on 2 cores slowed each other 2-3x when interleaved).
    """
    samples: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(rounds):
        for name, factory in factories.items():
            fn = factory()
            for _ in range(warmup):
                fn()
            for _ in range(per_block):
                time.sleep(pause_s)
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1000.0)
            del fn
            gc.collect()  # the session, and with it its thread pool, goes before the next block starts
    return samples


def json_from_child(
    module: str, *args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,), timeout: float = 900
) -> Any:
    """Run ``python -m module *args`` from the repository and parse the JSON line it prints last.

    ``ok`` lists the exit codes that still carry a result; any other code, or no output, raises with the
    child's stderr.
    """
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode not in ok or not done.stdout.strip():
        raise RuntimeError(f"python -m {module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table cell."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def latency_table(samples: dict[str, list[float]], baseline: str, notes: dict[str, str] | None = None) -> str:
    """Markdown: p50, p95, min–max per row and the p50 and p95 ratios to ``baseline``."""
    notes = notes or {}
    base = Stats.of(samples[baseline])
    lines = [
        f"| what | n | p50 ms | p95 ms | min–max ms | p50 ÷ {baseline} | p95 ÷ {baseline} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in samples.items():
        s = Stats.of(values)
        label = f"{name} ({notes[name]})" if name in notes else name
        lines.append(
            f"| {label} | {s.n} | {fmt(s.p50)} | {fmt(s.p95)} | {fmt(s.lo)}–{fmt(s.hi)} | {fmt(s.p50 / base.p50)}× "
            f"| {fmt(s.p95 / base.p95)}× |"
        )
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    """A pass/fail mark for a target row."""
    return "met" if ok else "NOT met"


def shown(value: float, limit: float, digits: int = 2) -> str:
    """``value`` for a Targets cell judged against ``limit``: with up to four more decimals where rounding would
    make it read as the limit itself (2.996 against "≥ 3×" reads 2.996, not 3.00, beside its "NOT met").

    Verdicts judge the unrounded value: one photo lost of 97 is 1.03 points, not a "1.0" within "≤ 1 point"."""
    text = fmt(value, digits)
    extra = 0
    while not math.isnan(value) and value != limit and float(text) == limit and extra < 4:
        extra += 1
        text = fmt(value, digits + extra)
    return text


# A ratio within 5% above 1 is run-to-run noise on this shared machine, not a win.
LEVEL_BAND = 0.05


def faster_verdict(ratio: float) -> str:
    """For "ours faster" (a ratio of theirs to ours): met only beyond the noise band; "level" inside it, above 1;
    NOT met at or under 1, however close (a row that stays at 0.96 run after run is a loss, not noise)."""
    if ratio > 1.0 + LEVEL_BAND:
        return "met"
    return "level (within 5%: not shown faster)" if ratio > 1.0 else "NOT met"


# --- photos -----------------------------------------------------------------------------------------


SAME_WORK_BAND = 0.10


def same_work_disagrees(p50s: list[float], band: float = SAME_WORK_BAND) -> bool:
    """Whether p50s of one piece of work (one session on tensors of one shape) spread wider than ``band``:
    the section that took them ran disturbed, and its ratios say more about the machine than about the code."""
    return len(p50s) > 1 and max(p50s) > (1.0 + band) * min(p50s)


def _noisy(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Sensor-like noise, so the JPEG is as dense as a real photo rather than a flat drawing."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.normal(0.0, sigma, arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def small_photo(kind: str = "cataract", seed: int = 0) -> bytes:
    """A ≈300 px JPEG of a drawn eye (quality 90): the size of a cropped upload."""
    from cataract_inference.drawing import draw_eye

    img = _noisy(draw_eye(kind, size=(320, 240), seed=seed), 4.0, seed)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def phone_photo(kind: str = "cataract", seed: int = 0, size: tuple[int, int] = (3000, 2000)) -> bytes:
    """A 3000×2000 JPEG (quality 90): a drawn eye upscaled, with noise, about a phone camera's size and density."""
    from cataract_inference.drawing import draw_eye

    base = draw_eye(kind, size=(size[0] // 4, size[1] // 4), seed=seed).resize(size, Image.Resampling.BICUBIC)
    img = _noisy(base, 6.0, seed)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def downscaled(data: bytes, side: int, quality: int = 92, fmt: str = "JPEG") -> bytes:
    """``data`` as a client would send it after downscaling: longest side ``side`` px, re-encoded as JPEG
    (what the web page does before upload, at 2048 px) or ``fmt``."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def photo_for(choice: str) -> bytes:
    """The photo a command-line tool sends: ``small``, ``phone``, or the path of a photo of the user's own."""
    if choice == "small":
        return small_photo()
    if choice == "phone":
        return phone_photo()
    return Path(choice).read_bytes()


# --- which model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """The model folder to measure and how it was found."""

    directory: Path
    description: str
    is_proxy: bool


def _json_object(path: Path) -> dict[str, Any]:
    """``path`` as a plain dict; empty when it is absent, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _manifest(model_dir: Path) -> dict[str, Any]:
    """``model_dir``/model.json as a plain dict; empty when it is absent or unreadable."""
    return _json_object(model_dir / "model.json")


def shipped_run(runs: Path = RUNS_DIR, model_dir: Path | None = None) -> Path | None:
    """The training run the model names (``metrics.training_run.run``; default: the bundled model), if its
    checkpoint is here.

    Not simply the newest run: a later experiment would otherwise be measured as if it were the shipped model.
    """
    manifest = _manifest(model_dir or BUNDLED_MODEL_DIR)
    name = ((manifest.get("metrics") or {}).get("training_run") or {}).get("run")
    run = runs / name if isinstance(name, str) and name else None
    return run if run is not None and (run / "model.pt").is_file() else None


def latest_run(runs: Path = RUNS_DIR, model_dir: Path | None = None) -> Path | None:
    """The model's run (see ``shipped_run``) when it is here, else the newest run with a checkpoint (``model.pt``),
    or ``None``."""
    shipped = shipped_run(runs, model_dir)
    if shipped is not None:
        return shipped
    candidates = sorted((p for p in runs.glob("*") if (p / "model.pt").is_file()), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def int8_variant(runs: Path = RUNS_DIR, model_dir: Path | None = None) -> tuple[Path, Path] | None:
    """(fp32 folder, int8 folder) of the run ``latest_run`` picks, when its export wrote both, or ``None``."""
    run = latest_run(runs, model_dir)
    if run is None:
        return None
    export = run / "export"
    if (export / "int8" / "model.onnx").is_file() and (export / "fp32" / "model.onnx").is_file():
        return export / "fp32", export / "int8"
    return None


def run_backbone(run: Path) -> str | None:
    """The backbone a training run's ``config.json`` names, or ``None`` when it cannot be read."""
    backbone = _run_config(run).get("backbone")
    return backbone if isinstance(backbone, str) else None


def run_size(run: Path) -> int | None:
    """The input size a training run's ``config.json`` names, or ``None`` when it cannot be read."""
    size = _run_config(run).get("size")
    return size if isinstance(size, int) else None


def _run_config(run: Path) -> dict[str, Any]:
    """A training run's ``config.json`` as a plain dict; empty when it is absent or unreadable."""
    return _json_object(run / "config.json")


def model_backbone(model_dir: Path) -> str | None:
    """The backbone ``model_dir``/model.json records: the training run's config where the release kept it, else its
    provenance's architecture matched against the training code's table; ``None`` when it records neither."""
    manifest = _manifest(model_dir)
    config = ((manifest.get("metrics") or {}).get("training_run") or {}).get("config") or {}
    if isinstance(config.get("backbone"), str):
        return str(config["backbone"])
    architecture = (manifest.get("backbone") or {}).get("architecture")
    if not isinstance(architecture, str):
        return None
    from cataract_training.backbones import BACKBONES  # imports torch: only once a PyTorch comparison needs it

    return next((name for name, info in BACKBONES.items() if info.architecture == architecture), None)


@dataclass(frozen=True)
class TorchTarget:
    """The PyTorch network that stands for the measured ONNX model: its backbone and input size, and the training
    run whose weights it loads (``None``: random weights, the same compute). ``refused`` says why there is none."""

    backbone: str | None
    size: int
    run: Path | None
    refused: str | None = None

    def describe(self) -> str:
        """The network in words, for the section text."""
        weights = (
            f"the weights of run `{self.run.name}`" if self.run else "random weights (the same network and compute)"
        )
        return f"`CataractNet({self.backbone})` at {self.size} px with {weights}"


def torch_target(model_dir: Path, runs: Path = RUNS_DIR) -> TorchTarget:
    """The PyTorch counterpart of the model in ``model_dir``, derived from its model.json: the backbone it records,
    and its own training run when that run's checkpoint is here. Never another run: the newest one may be another
    backbone, and the comparison would then time a different network from the one served."""
    size = int((_manifest(model_dir).get("input") or {}).get("size", 224))
    backbone = model_backbone(model_dir)
    run = shipped_run(runs, model_dir)
    if run is None:
        if backbone is None:
            why = f"{model_dir / 'model.json'} records no backbone, so no PyTorch network is known to match it"
            return TorchTarget(None, size, None, why)
        return TorchTarget(backbone, size, None)
    trained, trained_size = run_backbone(run), run_size(run)
    if backbone is None:
        backbone = trained
    if trained is None or trained != backbone or trained_size != size:
        why = (
            f"run `{run.name}` trained {trained or 'an unknown backbone'} at {trained_size} px, but the measured "
            f"model is {backbone} at {size} px"
        )
        return TorchTarget(backbone, size, None, why)
    return TorchTarget(backbone, size, run)


def choose_model(explicit: Path | None, scratch: Path) -> ModelChoice:
    """The bundled model when it exists; otherwise a proxy exported from the newest run (or random weights)."""
    if explicit is not None:
        return ModelChoice(explicit, f"{explicit}", is_proxy=False)
    if (BUNDLED_MODEL_DIR / "model.onnx").is_file():
        return ModelChoice(BUNDLED_MODEL_DIR, _describe(BUNDLED_MODEL_DIR), is_proxy=False)
    from benchmarks.proxy_model import build_proxy_model

    run = latest_run()
    directory = build_proxy_model(scratch / "proxy-model", run)
    where = f"weights of {run.name}" if run else "random weights"
    print(
        f"note: no bundled model yet; measuring a proxy export of the training architecture ({where})", file=sys.stderr
    )
    backbone = model_backbone(directory)
    return ModelChoice(directory, f"proxy: {backbone} serving graph exported here ({where})", is_proxy=True)


def _describe(directory: Path) -> str:
    import json

    data = json.loads((directory / "model.json").read_text(encoding="utf-8"))
    size = (directory / "model.onnx").stat().st_size / 1e6
    spec = data.get("input", {})
    return (
        f"{data.get('name')} {data.get('version')} ({data.get('precision', 'fp32')}, input {spec.get('size')} px, "
        f"{size:.1f} MB)"
    )
