"""Turn a training run into a shippable model folder: fp32 and int8 ONNX, calibration, evaluation, manifest.

Temperature and the sensitivity-first threshold are fitted on grouped cross-validation's out-of-fold predictions of
the photos outside the run's validation split (the fold models' predictions, not the shipped model's), so the
validation photos only report on them; without a cross-validation, on the validation photos (held out from
training by duplicate group), each precision on its own logits. Both variants are evaluated
through the serving classifier; the better one (see ``choose``) becomes ``model.onnx``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cataract_inference.manifest import (
    CARD_FILENAME,
    MANIFEST_FILENAME,
    MODEL_FILENAME,
    GateThresholds,
    Manifest,
    OutputNames,
    Provenance,
    load_manifest,
    version_problem,
    write_manifest,
)
from cataract_inference.model_source import sha256_of

from . import calibrate, card, evaluate, export, gate, quantize
from .files import replace_together, write_text
from .train import CLASSES, FIT_FLAGS, FitConfig, load_run, prepare

POS = CLASSES.index("cataract")
SENSITIVITY_TARGET = calibrate.SENSITIVITY_TARGET
MAX_THRESHOLD = calibrate.MAX_THRESHOLD


def _percentiles(x: np.ndarray) -> dict[str, float]:
    qs = (1, 5, 25, 50, 75, 95, 99)
    return {f"p{q}": round(float(np.percentile(x, q)), 3) for q in qs} | {"max": round(float(x.max()), 3)}


def build_manifest(
    model_path: Path,
    cfg: Any,
    *,
    version: str,
    temperature: float,
    threshold: float,
    precision: str,
    metrics: dict[str, Any],
    training_data: dict[str, Any],
) -> Manifest:
    """The manifest for ``model_path`` (its sha256 is computed here, so write the model first)."""
    from .backbones import BACKBONES

    info = BACKBONES[cfg.backbone]
    return Manifest(
        name="cataract-screen",
        version=version,
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        sha256=sha256_of(model_path),
        classes=CLASSES,
        positive_class="cataract",
        input=cfg.spec(),
        outputs=OutputNames(
            logits="logits", embedding="embedding", ood_distance="ood_distance", cam="cam", mid_distance="mid_distance"
        ),
        temperature=temperature,
        threshold=threshold,
        precision=precision,
        metrics=metrics,
        training_data=training_data,
        backbone=Provenance(architecture=info.architecture, weights=info.weights, licence=info.licence),
    )


def choose(fp32: dict[str, Any], int8: dict[str, Any]) -> tuple[str, str]:
    """Ship int8 only when it is clearly faster and loses nothing that matters on validation."""
    if "failed" in int8:
        return "fp32", f"no int8 variant could be built ({int8['failed']})"
    f, q = fp32["validation"], int8["validation"]
    faster = int8["latency"]["median_ms"] <= 0.8 * fp32["latency"]["median_ms"]
    as_good = (
        q["accuracy"]["value"] >= f["accuracy"]["value"]
        and q["sensitivity"]["value"] >= f["sensitivity"]["value"]
        and q["ece"] <= f["ece"] + 0.01
        and int8["parity_vs_fp32"]["argmax_agreement"] >= 0.99
    )
    if faster and as_good:
        return "int8", "int8 is at least 20% faster and matches fp32 on accuracy, sensitivity and calibration"
    reasons = []
    if not faster:
        reasons.append(
            f"int8 is not clearly faster ({int8['latency']['median_ms']} ms vs {fp32['latency']['median_ms']} ms)"
        )
    if not as_good:
        reasons.append("int8 loses accuracy, sensitivity, calibration or agreement with fp32 on validation")
    return "fp32", "; ".join(reasons)


# What `fit` names a run folder: <date>-<time>-<backbone>, and -2, -3, ... for runs started in the same second.
_RUN_NAME = re.compile(r"(?P<date>\d{8})-(?P<time>\d{6})-[A-Za-z0-9_]+(?P<again>-\d+)?")


def default_version(run: Path, backbone: str, today: dt.date | None = None) -> str:
    """The version export gives ``run`` without --version: the run's date, the backbone and the run's time (and its
    same-second suffix), e.g. ``2026.11.29-mnv2-101500-2`` for ``20261129-101500-mobilenet_v2-2``, so distinct runs
    get distinct versions; a renamed run gets ``today``'s date and its whole name."""
    found = _RUN_NAME.match(run.name)  # anything added after the stamp ("-final") is left out: versions stay short
    if found is None:
        day = (today or dt.date.today()).isoformat().replace("-", ".")
        return f"{day}-{_short(backbone)}-{run.name}"
    d = found["date"]
    return f"{d[:4]}.{d[4:6]}.{d[6:]}-{_short(backbone)}-{found['time']}{found['again'] or ''}"


def release(
    run: Path,
    out_dir: Path,
    *,
    precision: str = "auto",
    cv_json: Path | None = None,
    version: str | None = None,
    progress: bool = True,
    reason: str | None = None,
) -> dict[str, Any]:
    """Export ``run`` into ``out_dir`` (``model.onnx`` + ``model.json``) and return the export report."""
    cfg, net = load_run(run)
    # Checked before any work: a renamed run folder ("lr=3e-4") once failed only after the ONNX export.
    version = version or default_version(run, cfg.backbone)
    problem = version_problem(version)
    if problem:
        raise ValueError(f"{problem} (from the run folder's name {run.name!r}: pass --version)")
    if cv_json is not None:
        check_cv_matches(Path(cv_json), cfg)
    # The thread count changes float summation order, hence the OOD constants and the file's sha256:
    # pin it, so exporting the same run twice gives the same bytes whatever ran before in this process.
    torch.set_num_threads(cfg.threads)
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    prep = prepare(cfg, progress)
    where = {k: i for i, k in enumerate(prep.keys)}
    gone = [k for k in (*split["train"], *split["val"]) if k not in where]
    if gone:
        raise ValueError(
            f"{len(gone)} photos of the run's split are no longer usable in {cfg.data} (e.g. {gone[0]}): "
            "export needs the data the run was fitted on"
        )
    tr = [where[k] for k in split["train"]]
    va = [where[k] for k in split["val"]]
    loaded = _load_oof(cv_json, leave_out=frozenset(split["val"]), known=frozenset(where))
    oof, left_out = loaded if loaded is not None else (None, 0)
    _, train_emb, _, train_mid = _embed(net, prep.tensors[tr])
    ood = export.fit_ood(train_emb)
    graph = export.ServingGraph(net, ood, export.fit_feature_gaussian(train_mid))
    work = run / "export"
    if work.exists():
        shutil.rmtree(work)
    val_files = [prep.audit.samples[prep.index[i]].path for i in va]
    val_labels = [CLASSES[int(prep.labels[i])] for i in va]
    ref = export.torch_outputs(graph, prep.tensors[va])
    train_ref = export.torch_outputs(graph, prep.tensors[tr])
    variants: dict[str, dict[str, Any]] = {}
    training_data = _training_data(prep, tr, va, cfg)
    for name in ("fp32", "int8"):
        try:
            folder = work / name
            folder.mkdir(parents=True)
            model_path = folder / MODEL_FILENAME
            info: dict[str, Any] = {}
            if name == "fp32":
                export.export_onnx(graph, cfg.size, model_path)
            else:
                # Every training photo (never a validation one): prepare's tensors are serving's preprocessing.
                info["quantization"] = quantize.quantize_int8(
                    work / "fp32" / MODEL_FILENAME, model_path, prep.tensors[tr]
                )
                # The gate's distances must describe the features these bytes compute, not the float trunk's.
                info["gate_heads_refit"] = export.refit_gate_heads(model_path, prep.tensors[tr])
            outs = export.onnx_outputs(model_path, prep.tensors[va])
            info["parity_vs_torch"] = export.parity(ref, outs)
            if name == "fp32":
                export.check_fp32_parity(info["parity_vs_torch"])  # int8 is judged against fp32 (choose)
            if name == "int8":
                info["parity_vs_fp32"] = export.parity(variants["fp32"]["_outs"], outs)
            info["calibration"] = fit_calibration(outs["logits"], prep.labels[va], oof, left_out)
            temperature, threshold = info["calibration"]["temperature"], info["calibration"]["threshold"]
            train_outs = export.onnx_outputs(model_path, prep.tensors[tr])
            for head in ("ood_distance", "mid_distance"):
                info[head] = {"train": _percentiles(train_outs[head]), "val": _percentiles(outs[head])}
            info["temperature"] = round(temperature, 5)
            info["threshold"] = calibrate.shipped_threshold(threshold)
            info["nll_val_T1"] = round(calibrate.nll(outs["logits"], prep.labels[va], 1.0), 4)
            info["nll_val_T"] = round(calibrate.nll(outs["logits"], prep.labels[va], info["temperature"]), 4)
            info["size_bytes"] = model_path.stat().st_size
            # Scored as served: with the temperature and threshold model.json will hold. The unrounded threshold
            # can be the deciding cataract's own score, which serving, rounding that score first, would miss.
            manifest = build_manifest(
                model_path,
                cfg,
                version=version,
                temperature=info["temperature"],
                threshold=info["threshold"],
                precision=name,
                metrics={},
                training_data=training_data,
            )
            write_manifest(manifest, folder / MANIFEST_FILENAME)
            info["validation"] = evaluate.evaluate_folder(folder, val_files, val_labels, plot_dir=run, tag=f"-{name}")
            info["latency"] = evaluate.latency_ms(folder)
            info["_outs"] = outs
            variants[name] = info
            if progress:
                v = info["validation"]
                print(
                    f"{name}: parity {info['parity_vs_torch']['max_abs_logits']:.2e}  "
                    f"T={temperature:.3f} thr={threshold:.3f}  "
                    f"acc={v['accuracy']['value']} sens={v['sensitivity']['value']} spec={v['specificity']['value']} "
                    f"ece={v['ece']} auc={v['roc_auc']}  {info['latency']['median_ms']} ms",
                    flush=True,
                )
        except Exception as exc:
            # fp32 is the model; int8 is an option. Without it the export still ships fp32 (auto), and says why,
            # unless int8 was asked for by name.
            if name == "fp32" or precision == "int8":
                raise
            variants["int8"] = {"failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
            shutil.rmtree(work / name, ignore_errors=True)
            print(f"warning: no int8 variant ({variants['int8']['failed']}); exporting fp32", file=sys.stderr)
    del train_ref
    for v in variants.values():
        v.pop("_outs", None)
    picked, why = choose(variants["fp32"], variants["int8"])
    if precision != "auto":
        # Record what the measurements alone would have shipped, beside the user's choice and reason.
        why = f"chosen by the user ({reason or 'no reason given'}); by the measurements alone: {picked}, as {why}"
        picked = precision
    chosen = variants[picked]
    metrics: dict[str, Any] = {
        "validation": chosen["validation"],
        "validation_note": (
            "held-out validation photos (grouped by duplicates and reframed copies, never trained on) that also "
            "chose the epoch; "
            + (
                "the temperature and threshold were fitted without their predictions (on the other photos' "
                "out-of-fold predictions, from fold models that did train on them)"
                if chosen["calibration"].get("validation_left_out")
                else "they also fitted the temperature and threshold"
                if "threshold_oof" not in chosen["calibration"]
                else "their out-of-fold predictions were among those the temperature and threshold were fitted on"
            )
            + "; the cross-validated estimate below is the honest one"
        ),
        "export_parity": chosen["parity_vs_torch"],
        "ood_distance": chosen["ood_distance"],
        "mid_distance": chosen["mid_distance"],
        "precision_choice": {"shipped": picked, "why": why, "by_user": precision != "auto"},
        "variants": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("ood_distance", "mid_distance")}
            for k, v in variants.items()
        },
        "training_run": json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        | {"run": run.name, "config": {k: getattr(cfg, k) for k in FIT_FLAGS}},
    }
    metrics["training_run"].pop("history", None)
    metrics["robustness_validation"] = evaluate.robustness(work / picked, val_files, val_labels)
    if cv_json is not None and cv_json.is_file():
        cv = json.loads(cv_json.read_text(encoding="utf-8"))
        metrics["grouped_cv"] = {
            k: cv[k]
            for k in (
                "k",
                "epochs_per_fold",
                "config",  # how the folds trained: the card's Reproduce steps name it
                "n_photos",
                "n_groups",
                "cross_fitted",
                "cross_fitted_per_photo",
                "argmax_T1",
                "minutes",
                "folds",
            )
            if k in cv
        }
    shipped = work / picked
    previous = _previous_manifest(out_dir)
    kept_gate = None
    if previous is not None and previous.sha256 == sha256_of(shipped / MODEL_FILENAME):
        # Same model bytes: a gradability gate calibrated for them stays valid, so keep it.
        kept_gate = previous.gate
        _count_served_under(kept_gate, shipped, metrics, picked, (val_files, val_labels))
    manifest = build_manifest(
        shipped / MODEL_FILENAME,
        cfg,
        version=version,
        temperature=chosen["temperature"],
        threshold=chosen["threshold"],
        precision=picked,
        metrics=metrics,
        training_data=training_data,
    )
    if kept_gate is not None:
        manifest = manifest.model_copy(update={"gate": kept_gate})
    elif previous is not None and (previous.gate.model_extra or {}).get("calibration"):
        # New bytes (new weights, or int8): the old thresholds belong to the old distances. Say so loudly,
        # since the default gate has no "not an eye" check at all.
        print(
            f"WARNING: {out_dir / MANIFEST_FILENAME} had a gradability gate calibrated for model "
            f"{previous.sha256[:12]}; the new model ({manifest.sha256[:12]}) gets the default gate, which does not "
            f"refuse non-eye photos. Recalibrate before shipping: python -m cataract_training.gate "
            f"--model-dir {out_dir} --data <photos> --split {run / 'split.json'}",
            file=sys.stderr,
        )
    # Rendered before anything in out_dir is touched: a card that cannot be read fails here, with the old set intact.
    card_text = card.card_text(manifest, out_dir)
    replace_together(
        out_dir,
        {
            MODEL_FILENAME: lambda tmp: shutil.copyfile(shipped / MODEL_FILENAME, tmp),
            MANIFEST_FILENAME: lambda tmp: write_manifest(manifest, tmp),
            CARD_FILENAME: lambda tmp: write_text(tmp, card_text),
        },
    )
    (run / "export_report.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    return metrics


def _count_served_under(
    kept: GateThresholds, folder: Path, metrics: dict[str, Any], picked: str, val: tuple[list[Path], list[str]]
) -> None:
    """Re-count the validation photos ``val`` (files, labels) as answered (``gate_ungradable``, ``served_referrals``,
    ``served``) under the ``kept`` gate, as the gate calibration does when it writes one
    (``gate.refresh_validation_counts``).

    Export counted them under the default gate of its work folder; model.json and the card would otherwise report
    a gate that is not the one served. ``folder`` (the shipped variant's work folder) gets the kept gate to count.
    """
    path = folder / MANIFEST_FILENAME
    write_manifest(load_manifest(path).model_copy(update={"gate": kept}), path)
    counts = gate.served_counts(folder, *val)
    metrics["validation"].update(counts)
    for name, variant in metrics["variants"].items():
        if name == picked:
            variant["validation"].update(counts)
        else:  # as the gate calibration leaves them: the kept gate was calibrated for the shipped bytes only
            for key in counts:
                variant["validation"].pop(key, None)


def _previous_manifest(out_dir: Path) -> Manifest | None:
    """The manifest already in ``out_dir``, if any and readable."""
    from cataract_inference.manifest import ManifestError

    try:
        return load_manifest(out_dir / MANIFEST_FILENAME)
    except ManifestError:
        return None


# What a CV run must share with the fitted run for its predictions to calibrate it.
CV_MUST_MATCH = ("backbone", "size", "resize")


def check_cv_matches(cv_json: Path, cfg: FitConfig) -> None:
    """Refuse a ``cv.json`` from another data folder or recipe: its temperature and threshold would be another
    model's, and the card would call them this one's honest estimate."""
    if not cv_json.is_file():
        raise FileNotFoundError(f"{cv_json} not found: pass the cv.json of a finished `cv` run")
    try:
        cv_report = json.loads(cv_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{cv_json} is not a cv.json (not JSON: {exc}): pass the cv.json of a finished `cv` run"
        ) from exc
    if not isinstance(cv_report, dict):
        raise ValueError(f"{cv_json} is not a cv.json (not a JSON object): pass the cv.json of a finished `cv` run")
    cv_cfg = cv_report.get("config", {})
    cv_data = Path(cv_cfg.get("data", "")).expanduser()
    # Older runs kept the path as typed, relative to a directory unknown now: the photo keys are checked instead.
    if cv_data.is_absolute() and cv_data.resolve() != Path(cfg.data).resolve():
        raise ValueError(f"{cv_json} cross-validated {cv_cfg.get('data')!r}, but the run was fitted on {cfg.data!r}")
    differ = {k: (cv_cfg.get(k), getattr(cfg, k)) for k in CV_MUST_MATCH if cv_cfg.get(k) != getattr(cfg, k)}
    if differ:
        raise ValueError(
            f"{cv_json} used another recipe than the run: "
            + ", ".join(f"{k} {a!r} against {b!r}" for k, (a, b) in differ.items())
        )


def _load_oof(
    cv_json: Path | None, leave_out: frozenset[str] = frozenset(), known: frozenset[str] | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], int] | None:
    """Out-of-fold logits and labels saved by ``cv`` beside its cv.json, if given, without the ``leave_out`` photos,
    and how many were left out.

    ``cv`` records each prediction's file (older runs did not: then nothing can be left out). With ``known`` (the
    photos usable now), a prediction for any other photo is refused: the CV was run on other data.
    """
    if cv_json is None:
        return None
    npz = Path(cv_json).with_name("cv_oof.npz")
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} not found: pass the cv.json of a finished `cv` run")
    with np.load(npz) as z:
        logits, labels = z["logits"], z["labels"]
        if "keys" in z.files and known is not None:
            strangers = sorted(set(z["keys"].tolist()) - known)
            if strangers:
                raise ValueError(
                    f"{npz} holds predictions for {len(strangers)} photos that are not in the run's data "
                    f"(e.g. {strangers[0]}): pass the cv.json of a CV on the same data"
                )
        if "keys" not in z.files or not leave_out:
            return (logits, labels), 0
        keep = ~np.isin(z["keys"], sorted(leave_out))
        return (logits[keep], labels[keep]), int((~keep).sum())


def fit_calibration(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    oof: tuple[np.ndarray, np.ndarray] | None = None,
    left_out: int = 0,
) -> dict[str, Any]:
    """Temperature and threshold (sensitivity >= 0.95) from held-out predictions.

    With grouped-CV out-of-fold predictions (every photo scored by a model that never saw it nor its
    duplicates) both are fitted on them, the validation photos left out (``left_out`` of them), so the
    validation split reports on a threshold and temperature it did not help choose. A small validation
    split is often perfectly separated, and then the NLL-optimal temperature runs to zero (certainty that
    will not hold on new photos). The threshold never exceeds 0.5: whatever the fit, a referral is at
    least as sensitive as the model's own argmax. Without CV, both come from the validation split. Perfectly
    separated predictions, out-of-fold or validation, cannot sharpen the model (temperature >= 1).
    """
    val_pos = val_labels == POS
    if oof is not None:
        logits, labels = oof
        fit = calibrate.fit_held_out_temperature(logits, labels)
        _warn_if_at_bound(fit, f"{len(labels)} out-of-fold predictions", "the CV's folds are too few or too small")
        t = fit.temperature
        thr_oof = calibrate.threshold_for_sensitivity(
            calibrate.softmax(logits, t)[:, POS], labels == POS, SENSITIVITY_TARGET
        )
        # For the record only: what the validation photos alone would have asked for.
        thr_val = calibrate.threshold_for_sensitivity(
            calibrate.softmax(val_logits, t)[:, POS], val_pos, SENSITIVITY_TARGET
        )
        return {
            "source": (
                f"grouped-CV out-of-fold predictions ({len(labels)} photos"
                + (f"; the {left_out} validation photos left out" if left_out else "")
                + ")"
                + _SEPARATED * fit.separable
            ),
            "temperature": t,
            "threshold": min(thr_oof, MAX_THRESHOLD),
            "threshold_oof": thr_oof,
            "threshold_val": thr_val,
            "validation_left_out": left_out,
            "sensitivity_target": SENSITIVITY_TARGET,
        }
    fit = calibrate.fit_held_out_temperature(val_logits, val_labels)
    _warn_if_at_bound(
        fit,
        f"{len(val_labels)} validation photos",
        "pass --cv (cross-validation's out-of-fold predictions) for a temperature worth shipping",
    )
    t = fit.temperature
    thr = calibrate.threshold_for_sensitivity(calibrate.softmax(val_logits, t)[:, POS], val_pos, SENSITIVITY_TARGET)
    return {
        "source": f"validation split ({len(val_labels)} photos)" + _SEPARATED * fit.separable,
        "temperature": t,
        "threshold": min(thr, MAX_THRESHOLD),
        "sensitivity_target": SENSITIVITY_TARGET,
    }


_SEPARATED = ", perfectly separated: temperature kept >= 1"


def _warn_if_at_bound(fit: calibrate.HeldOutTemperature, fitted_on: str, remedy: str) -> None:
    if fit.at_bound:
        print(
            f"warning: the temperature fitted on {fitted_on} ran to the fit's bound ({fit.temperature:.3g}; it stops "
            f"at {fit.bounds[0]:g} and {fit.bounds[1]:g}), so the probabilities it gives are not calibrated: the "
            f"predictions are too few, or their logits too close to tied; {remedy}.",
            file=sys.stderr,
        )


def _short(backbone: str) -> str:
    return {"mobilenet_v2": "mnv2", "efficientnet_lite0": "effl0"}.get(backbone, backbone)


def _embed(net: Any, tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logits, embeddings, last feature maps and pooled mid-level features of ``tensors``."""
    import torch

    net.eval()
    outs: list[list[np.ndarray]] = [[], [], [], []]
    with torch.no_grad():
        for i in range(0, len(tensors), 32):
            for j, t in enumerate(net.forward_serving(torch.from_numpy(tensors[i : i + 32]))):
                outs[j].append(t.numpy())
    return tuple(np.concatenate(o) for o in outs)  # type: ignore[return-value]


def _training_data(prep: Any, tr: list[int], va: list[int], cfg: Any) -> dict[str, Any]:
    rep = prep.audit.report
    return {
        "source": str(cfg.data),
        "files": rep["n_files"],
        "counts": rep["counts"],
        "distinct_photos": rep["distinct_photos"],
        "distinct_by_label": rep["distinct_by_label"],
        "exact_duplicate_groups": len(rep["exact_duplicate_groups"]),
        "near_duplicate_groups": len(rep["near_duplicate_groups"]),
        "conflicts_excluded": [f for c in rep["conflicts"] for f in c["files"]],
        "unreadable_excluded": [u["file"] for u in rep["unreadable"]],
        "median_original_width": {k: v["width"].get("median") for k, v in rep["sizes"].items()},
        "findings": rep["findings"],
        "split": {
            "train_photos": len(tr),
            "val_photos": len(va),
            "train_groups": len({prep.groups[i] for i in tr}),
            "val_groups": len({prep.groups[i] for i in va}),
            "grouped": True,
        },
    }
