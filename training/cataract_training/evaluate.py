"""Evaluate an exported model folder the way it is served: bytes -> serving decoder -> ONNX -> classifier.

Nothing here touches torch: the numbers describe ``model.onnx`` + ``model.json`` as the function
loads them with ``cataract_inference.classifier.load_classifier``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from cataract_inference.classifier import load_classifier
from cataract_inference.imaging import ImageError, decode_image

from . import metrics


def _encode(img: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def _shrink(img: Image.Image, side: int) -> Image.Image:
    scale = side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)


# Degradations that probe the size/blur shortcut: a model that learned "large and sharp = cataract"
# would lose its cataracts under the first and third. The second mostly checks that serving is
# resolution-invariant: the letterbox resizes the upscaled photo back to the input size.
def _decoded(data: bytes) -> Image.Image:
    """The photo as the service decodes it (upright, 8-bit, sRGB), for a degradation to start from."""
    return decode_image(data).image


DEGRADATIONS: dict[str, Callable[[bytes], bytes]] = {
    "shrunk_to_128px_jpeg50": lambda b: _encode(_shrink(_decoded(b), 128), "JPEG", 50),
    "upscaled_to_1024px": lambda b: _encode(_shrink(_decoded(b), 1024)),
    "gaussian_blur_2px": lambda b: _encode(_decoded(b).filter(ImageFilter.GaussianBlur(2))),
}


def recoloured(scale: tuple[float, float, float]) -> Callable[[bytes], bytes]:
    """A degradation: the photo as served, each channel scaled by ``scale`` (a white balance, an exposure), as PNG."""

    def shift(data: bytes) -> bytes:
        pixels = np.asarray(_decoded(data).convert("RGB"), dtype=np.float32) * np.asarray(scale, dtype=np.float32)
        return _encode(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)))

    return shift


def robustness(model_dir: Path, files: list[Path], labels: list[str]) -> dict[str, Any]:
    """Accuracy, sensitivity and specificity (Wilson 95%) of the served model under each degradation."""
    out: dict[str, Any] = {}
    for name, fn in DEGRADATIONS.items():
        s = score_folder(model_dir, files, labels, transform=fn)
        rep = metrics.binary_report(s["is_pos"], s["model_referral"], s["p_pos"])
        out[name] = {k: rep[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ece")}
    return out


def score_folder(
    model_dir: Path, files: list[Path], labels: list[str], transform: Callable[[bytes], bytes] | None = None
) -> dict[str, Any]:
    """Run every file (optionally transformed) through the served classifier; collect logits, probabilities, gate."""
    clf = load_classifier(Path(model_dir))
    man = clf.manifest
    pos = man.positive_index
    logits, probs, gradable, referral, model_referral = [], [], [], [], []
    for path in files:
        raw = path.read_bytes() if transform is None else transform(path.read_bytes())
        try:
            # predict_bytes's own measurement and gate, unrounded (a probability rounded for the response
            # could land on the threshold), with the whole photo's raw logits for temperature studies.
            measured = clf.measure(raw, skin=True)
        except ImageError as exc:
            raise ValueError(f"{path}: {exc} (fix or remove it; `cataract-train audit` lists them)") from exc
        _, refer, verdict = clf.judge(measured)
        model_referral.append(clf.decide(measured.probabilities)[1])  # the model's rule alone, rounded as served
        probs.append(float(measured.probabilities[pos]))
        gradable.append(verdict.gradable)
        referral.append(refer)
        logits.append(measured.logits)
    is_pos = np.array([lab == man.positive_class for lab in labels])
    p_pos = np.array(probs)
    return {
        "manifest": man,
        "pos_index": pos,
        "is_pos": is_pos,
        "p_pos": p_pos,
        "logits": np.array(logits),
        "gradable": np.array(gradable),
        "referral": np.array(referral),
        "model_referral": np.array(model_referral, dtype=bool),
    }


def served_report(is_pos: np.ndarray, referral: np.ndarray) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV of the answers as served: an ungradable photo is referred."""
    rates = metrics.decision_rates(is_pos, referral)
    return {
        **{k: rates[k] for k in ("sensitivity", "specificity", "ppv", "npv")},
        "rule": "as answered: the gate's ungradable photos are referred",
    }


def evaluate_folder(
    model_dir: Path, files: list[Path], labels: list[str], plot_dir: Path | None = None, tag: str = ""
) -> dict[str, Any]:
    """Metrics with Wilson intervals at the manifest's threshold and temperature, plus gate counts."""
    s = score_folder(model_dir, files, labels)
    man = s["manifest"]
    # The model's probability alone (no gate), at the shipped threshold; "served" adds the gate, as answered.
    report = metrics.binary_report(s["is_pos"], s["model_referral"], s["p_pos"])
    report["threshold"] = man.threshold
    report["temperature"] = man.temperature
    report["argmax_accuracy"] = metrics.proportion(int(((s["p_pos"] >= 0.5) == s["is_pos"]).sum()), len(files))
    report["gate_ungradable"] = int((~s["gradable"]).sum())
    report["served_referrals"] = int(s["referral"].sum())
    report["served"] = served_report(s["is_pos"], s["referral"])
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
        reliability_plot(s["p_pos"], s["is_pos"], plot_dir / f"reliability{tag}.png", f"ECE {report['ece']:.3f}")
        roc_plot(s["is_pos"], s["p_pos"], plot_dir / f"roc{tag}.png", f"AUC {report['roc_auc']:.3f}")
    return report


def latency_ms(model_dir: Path, runs: int = 50, threads: int = 1) -> dict[str, float]:
    """Median and p90 of one-image ONNX inference, as served (single thread by default)."""
    clf = load_classifier(Path(model_dir), intra_op_threads=threads)
    size = clf.manifest.input.size
    x = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    for _ in range(5):
        clf.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clf.run(x)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": round(float(np.median(times)), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
        "threads": threads,
    }


def reliability_plot(p_pos: np.ndarray, is_pos: np.ndarray, path: Path, title: str = "") -> None:
    """Reliability diagram of P(cataract): observed frequency against predicted probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = metrics.calibration_bins(p_pos, is_pos.astype(float), 10)
    mids = [(b["lo"] + b["hi"]) / 2 for b in bins if b["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.bar(mids, [b["accuracy"] for b in bins if b["count"]], width=0.09, alpha=0.6, label="observed")
    ax.plot(
        [b["confidence"] for b in bins if b["count"]],
        [b["accuracy"] for b in bins if b["count"]],
        "o-",
        label="bin mean",
    )
    ax.set_xlabel("predicted P(cataract)")
    ax.set_ylabel("fraction cataract")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_plot(is_pos: np.ndarray, p_pos: np.ndarray, path: Path, title: str = "") -> None:
    """ROC curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = metrics.roc_curve(is_pos, p_pos)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _changes(old: Any, new: Any, path: str = "") -> dict[str, list[Any]]:
    """Every leaf that differs between two metric records: ``{"a.b": [old, new]}``."""
    if isinstance(old, dict | None) and isinstance(new, dict | None) and (old or new) is not None:
        old, new = old or {}, new or {}  # a record added or dropped whole: its figures, one by one
        out: dict[str, list[Any]] = {}
        for key in sorted(set(old) | set(new)):
            out |= _changes(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    return {} if old == new else {path: [old, new]}


def _leaf(record: Any, path: str) -> Any:
    """The value at a ``_changes`` key (``a.b.c``) in ``record``, or None where there is none."""
    for part in path.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return record


def recount_history(recount: Any) -> list[dict[str, Any]]:
    """The recounts ``metrics.validation_recounted`` records, oldest first (a record of one, as first written,
    had ``date`` and ``why`` at its top)."""
    if not isinstance(recount, dict):
        return []
    if recount.get("history"):
        return list(recount["history"])
    return [{"date": recount["date"], "why": recount.get("why")}] if recount.get("date") else []


def recount_validation(
    manifest: Any, model_dir: Path, files: list[Path], labels: list[str], *, why: str, today: str
) -> Any:
    """``manifest`` with its validation and robustness figures recounted through today's serving code.

    The export measured them through the serving code of its day; when that code changes what it answers (a new
    view, a decoding fix), the record would describe a service that no longer exists. The figures are replaced
    (the shipped variant's in ``metrics.variants`` too, as the gate calibration keeps them in step), and
    ``metrics.validation_recounted`` keeps every recount's date and reason and, per figure, its export value and
    its value now, so the card can say so. The fitted temperature and threshold keep their unrounded record.
    """
    m = dict(manifest.metrics)
    # The record keeps the fitted temperature and threshold unrounded; the manifest serves them rounded.
    fitted = {k: v for k, v in (m.get("validation") or {}).items() if k in ("temperature", "threshold")}
    # As JSON would give them back: the comparison below is with the record model.json holds.
    validation = json.loads(
        json.dumps(metrics.json_ready(evaluate_folder(Path(model_dir), files, labels)), default=float)
    )
    robust = json.loads(json.dumps(metrics.json_ready(robustness(Path(model_dir), files, labels)), default=float))
    validation |= fitted
    moved = _changes(
        {"validation": m.get("validation"), "robustness_validation": m.get("robustness_validation")},
        {"validation": validation, "robustness_validation": robust},
    )
    m["validation"], m["robustness_validation"] = validation, robust
    variants = dict(m.get("variants") or {})
    if isinstance(variants.get(manifest.precision), dict):
        variants[manifest.precision] = {**variants[manifest.precision], "validation": validation}
        m["variants"] = variants
    before = m.get("validation_recounted") or {}
    history = [*recount_history(before), {"date": today, "why": why}]
    # Each figure's export value stays the first one; its value now is read from the record as recounted (another
    # tool, the gate calibration, may have changed a figure since the last recount).
    now = {"validation": validation, "robustness_validation": robust}
    export_values = {key: old for key, (old, _) in moved.items()} | {
        k: v[0] for k, v in (before.get("moved") or {}).items()
    }
    since_export = {key: [old, _leaf(now, key)] for key, old in sorted(export_values.items())}
    m["validation_recounted"] = {
        "history": history,
        "moved": {k: v for k, v in since_export.items() if v[0] != v[1]},
    }
    return manifest.model_copy(update={"metrics": m})
