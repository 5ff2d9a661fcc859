"""Render ``MODEL_CARD.md`` from ``model.json``, so the card's numbers are always the manifest's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from cataract_inference.classifier import SPLIT_ASPECT
from cataract_inference.manifest import CARD_FILENAME, InputSpec, Manifest

from .backbones import BACKBONES
from .calibrate import shipped_threshold
from .cv import FIT_ONLY
from .evaluate import recount_history
from .files import replace_together, write_text
from .gate import CARD_BLOCK as GATE_BLOCK
from .gate import GATE_BELOW, GATE_ELSEWHERE, GATE_UNCALIBRATED, SERVED_BLOCK, served_block
from .metrics import format_rate as _ci
from .train import FIT_FLAGS, FitConfig

_BLOCK = re.compile(r"<!-- BEGIN ([\w.-]+)[^>]*-->.*?<!-- END \1 -->", re.S)


_RESIZE_WORDS = {
    "letterbox": "letterboxed (padded, never cropped)",
    "squash": "squashed (stretched to a square)",
    "center_crop": "centre-cropped",
}
_IMAGENET = InputSpec()  # the default normalisation is ImageNet's


def _normalisation(spec: InputSpec) -> str:
    if (spec.mean, spec.std) == (_IMAGENET.mean, _IMAGENET.std):
        return "ImageNet normalisation"
    return f"normalised by mean {list(spec.mean)} and std {list(spec.std)}"


def _is_bundled_data(source: str) -> bool:
    """Whether the model was trained on the project's own photos (``cataract-eyes/train``), whose provenance and
    flaws the card can state; a card for anyone else's photos says only what training measured."""
    return tuple(Path(source.replace("\\", "/")).parts[-2:]) == ("cataract-eyes", "train")


def _fit_flags(config: dict[str, Any]) -> str:
    """The ``cataract-train fit`` flags that differ from the defaults, as the run recorded its settings."""
    default = FitConfig(data=".")
    return "".join(
        f" --{name.replace('_', '-')} {config[name]}"
        for name in FIT_FLAGS
        if name in config and config[name] != getattr(default, name)
    )


def _provenance_lines(td: dict[str, Any], bundled: bool) -> list[str]:
    """Where the photos came from and what the audit found in them."""
    grouping = (
        "- After grouping exact, near and reframed duplicates (sha256 of bytes; perceptual hashes; matched "
        "keypoints for crops, borders, mirror images and recolourings): "
        f"**{td.get('distinct_photos', 'n/a')} distinct photos** ({td.get('distinct_by_label', {})}), "
        f"{td.get('exact_duplicate_groups', 'n/a')} exact and {td.get('near_duplicate_groups', 'n/a')} near-duplicate "
        "groups. Every split (validation and CV folds) keeps a duplicate group on one side."
    )
    excluded = ", ".join(td.get("conflicts_excluded", [])) or "none"
    if bundled:
        return [
            f'- Source: the train split of the public Kaggle data set "cataract-image-dataset" (nandanp6), '
            f"{td.get('files', 'n/a')} web-scraped photos ({td.get('counts', {})}). The Kaggle page grants no "
            "licence for redistribution; the photos are not in this repository and never will be.",
            grouping,
            f"- Excluded: the photo found in both classes ({excluded}).",
            f"- Size shortcut: median original width {td.get('median_original_width', {})}. A model could learn "
            "size or blur instead of the eye; augmentation degrades resolution, sharpness and JPEG quality in both "
            "classes.",
            "- The data set's copies were downscaled to at most 512 px, and its 15 photos of 4 MiB or more are "
            "missing; the size-shortcut widths above are those of the originals.",
            "- Framing varies (one eye, both eyes, faces, stock photos with captions). Demographics, devices and "
            "clinical ground truth are unknown: labels are the scraper's, not an ophthalmologist's.",
        ]
    unreadable = ", ".join(td.get("unreadable_excluded", [])) or "none"
    return [
        f"- Source: `{td.get('source', 'n/a')}`, {td.get('files', 'n/a')} photos ({td.get('counts', {})}). "
        "Training knows nothing of where they come from: record their origin, licence and the patients' consent "
        "here.",
        grouping,
        f"- Excluded: photos found in both classes ({excluded}); unreadable files ({unreadable}).",
        f"- Median width by class, as the audit read it: {td.get('median_original_width', {})}. When the classes "
        "differ in size or sharpness a model can learn that instead of the eye; augmentation degrades resolution, "
        "sharpness and JPEG quality in both classes.",
        "- Demographics, devices and how the labels were made (by whom, against what ground truth) are not "
        "recorded by training: state them here.",
    ]


def _limitation_lines(td: dict[str, Any], bundled: bool) -> list[str]:
    if bundled:
        return [
            "- Small, duplicated, web-scraped training set: confidence intervals are wide, and the photos are not "
            "representative of any screening population. Performance on phone photos taken in the field is unknown.",
            "- Dense or mature cataracts dominate the cataract class; early cataract is likely missed.",
            "- Validation is grouped by copies, not by person: some normal photos are the two eyes of one face, and "
            "14 of the 47 validation normals have their fellow eye in training; they score more confidently normal "
            "than the others (docs/training.md, Splits).",
        ]
    return [
        f"- Trained and measured on {td.get('files', 'n/a')} photos of one collection: the intervals above are as "
        "wide as that count makes them, and performance on other cameras, clinics and populations is unknown "
        "until it is measured on their photos (`cataract-train evaluate`).",
    ]


def _reproduce_lines(manifest: Manifest, bundled: bool) -> list[str]:
    m = manifest.metrics
    run = m.get("training_run", {})
    cv = m.get("grouped_cv") or {}
    data = (
        "../shared/data/cataract-eyes/train"
        if bundled
        else shlex.quote(str(manifest.training_data.get("source", "DATA")))
    )
    config = run.get("config")
    fit_flags = _fit_flags(config) if isinstance(config, dict) else ""
    out = "functions/inference/model" if bundled else "<this folder>"  # where the card sits: not always the repo's
    choice = m.get("precision_choice", {})
    lines = ["```", f"cataract-train audit {data}", f"cataract-train fit {data}{fit_flags}"]
    if cv:  # exported with --cv: how that CV ran, as model.json records it
        # The CV's own config where model.json keeps it (exports since 2026-11-29); else the fit's, less its own flags.
        shared = cv.get("config") or config or {}
        shared = {k: v for k, v in shared.items() if k not in FIT_ONLY} if isinstance(shared, dict) else {}
        folds = f" --folds {cv['k']}" if cv.get("k", 5) != 5 else ""
        epochs = cv.get("epochs_per_fold")
        lines.append(
            f"cataract-train cv {data}{_fit_flags(shared)}{folds}"
            + (f" --fold-epochs {epochs}" if epochs else "  # --fold-epochs: as in its cv.json (model.json has none)")
        )
    lines += [
        "cataract-train export runs/<fit run>"
        + (" --cv runs/<cv run>/cv.json" if cv else "")
        + f" --out {out} "
        + (f'--precision {manifest.precision} --reason "<why>"' if choice.get("by_user") else "--precision auto"),
        f"python -m cataract_training.gate --model-dir {out} --data {data}",
        "```",
        "",
    ]
    if not isinstance(config, dict) and not bundled:
        lines += [f"The fit's own flags are in `runs/{run.get('run', '<fit run>')}/config.json`.", ""]
    return lines


def _validation_files_note(run: dict[str, Any]) -> str:
    """The validation column counts files; say how few distinct photos they are, when training recorded it."""
    n, distinct = run.get("n_val"), run.get("val_distinct_groups")
    if not n or not distinct or distinct >= n:
        return ""
    return (
        f", and it counts files: its {n} files are {distinct} distinct photos (copies of one photo are not "
        "independent evidence), so its intervals are narrower than the photos justify"
    )


def _meaning_lines(manifest: Manifest) -> list[str]:
    """What a served P(cataract) is, and what it is not: for the people who read it beside a referral."""
    counts: dict[str, int] = {}
    run = manifest.metrics.get("training_run", {})
    for part in ("train_counts", "val_counts"):
        for label, k in (run.get(part) or {}).items():
            counts[label] = counts.get(label, 0) + int(k)
    total = sum(counts.values())
    share = (
        f"{counts.get(manifest.positive_class, 0) / total:.0%} of the photos it was trained and calibrated on show "
        f"{manifest.positive_class}"
        if total
        else "the photos it was trained and calibrated on were not counted by class"
    )
    share = share[0].upper() + share[1:]
    return [
        f"What P({manifest.positive_class}) means: the softmax of the logits over the temperature. {share}"
        "; where it is rarer, as in most clinics, the same P overstates the chance, and a larger share of referrals "
        "are healthy eyes (the predictive value falls with prevalence while sensitivity does not). For a photo at "
        "least twice as long as it is high it is the most suspicious of three views (the whole and each half), a "
        "maximum, so biased upwards; for an `ungradable` photo it is what the model said about a photo it should not "
        "judge, to be ignored. On photos from other sources it is less reliable than the figures here.",
        "",
    ]


def _decision_lines(manifest: Manifest, cal: dict[str, Any], cv: dict[str, Any]) -> list[str]:
    """How the temperature and threshold were chosen, and what held-out data says of each."""
    target = cal.get("sensitivity_target")
    crossed = cv.get("cross_fitted", {}).get("sensitivity", {})
    oof_cut = shipped_threshold(cal["threshold_oof"]) if "threshold_oof" in cal else None  # as model.json keeps it
    lines = []
    if cal.get("validation_left_out"):
        lines.append(
            f"The temperature (T = {manifest.temperature:.4f}) and the threshold were fitted on {cal['source']}, so "
            "no validation photo's own prediction chose either; those photos did help train the cross-validation's "
            "fold models, whose predictions did, a weak and indirect influence. The threshold is where those "
            f"predictions reach sensitivity >= {target:.0%} ({oof_cut:g}), capped at 0.5, the model's own argmax at "
            "any temperature, so a referral is never less sensitive than the bare model."
        )
        if crossed.get("n"):
            lines[-1] += (
                f" Cross-fitted (each fold's threshold chosen on the other folds) the same rule gives {_ci(crossed)}: "
                f"expect somewhat below {target:.0%} on new photos."
            )
    elif "threshold_oof" in cal:
        lines.append(
            f"The temperature (T = {manifest.temperature:.4f}) was fitted on the grouped-CV out-of-fold "
            f"predictions. The threshold is where those predictions reach sensitivity >= {target:.0%} "
            f"({oof_cut:g}), capped at 0.5, the model's own argmax. The validation split alone would "
            f"have asked for {cal['threshold_val']:.4f}; it is recorded, not used."
        )
        if crossed.get("n"):
            lines[-1] += (
                f" The {target:.0%} is met on the photos the threshold was chosen on. Cross-fitted (each fold's "
                f"threshold chosen on the other folds) the same rule gives {_ci(crossed)}: expect somewhat below "
                f"{target:.0%} on new photos."
            )
    elif cal:
        lines.append(f"Temperature and threshold were fitted on: {cal.get('source')}.")
    shipped = manifest.metrics.get("variants", {}).get(manifest.precision, {})
    if "nll_val_T" in shipped and "nll_val_T1" in shipped and shipped["nll_val_T"] > shipped["nll_val_T1"]:
        lines.append(
            f"On this model's own validation photos the temperature does not help: log loss {shipped['nll_val_T']} "
            f"with it against {shipped['nll_val_T1']} without (a small split the model nearly always gets right). "
            "Read P(cataract) as a ranked score that is roughly calibrated, not as an exact frequency."
        )
    return [line for text in lines for line in (text, "")]


def _table(rows: dict[str, dict[str, Any]]) -> list[str]:
    names = list(rows)
    out = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in (
        ("accuracy", "accuracy"),
        ("sensitivity", "sensitivity (cataract referred)"),
        ("specificity", "specificity (normal passed)"),
        ("ppv", "PPV"),
        ("npv", "NPV"),
    ):
        out.append(f"| {label} | " + " | ".join(_ci(rows[n][key]) for n in names) + " |")
    out.append("| ROC AUC | " + " | ".join(f"{rows[n]['roc_auc']:.3f}" for n in names) + " |")
    out.append("| ECE (10 bins) | " + " | ".join(f"{rows[n]['ece']:.3f}" for n in names) + " |")
    out.append(
        "| confusion (tp/fn/fp/tn) | "
        + " | ".join("{tp}/{fn}/{fp}/{tn}".format(**rows[n]["confusion"]) for n in names)
        + " |"
    )
    return out


def _per_photo_rule_note(cv: dict[str, Any]) -> str:
    """How the per-photo column was scored: by the served per-file rule, or (older runs) a rule refitted on it."""
    per_photo, per_file = cv.get("cross_fitted_per_photo") or {}, cv.get("cross_fitted") or {}
    if not per_photo or per_photo.get("rule") == "per_file":
        return ", each scored by its fold's per-file temperature and threshold, the rule that is served"
    mine, served = per_photo.get("thresholds") or [], per_file.get("thresholds") or []
    span = (
        f" ({min(mine):.4f}–{max(mine):.4f}, against {min(served):.4f}–{max(served):.4f} per file)"
        if mine and served
        else ""
    )
    return (
        ", with a temperature and threshold refitted on the distinct photos" + span + ": not the rule that is served, "
        "and looser where they are lower, so its sensitivity overstates the served rule's on distinct photos"
    )


def render(manifest: Manifest, *, gate_section: bool = True) -> str:
    """The model card as Markdown. ``gate_section``: the gate calibration's own section will follow."""
    m = manifest.metrics
    td = manifest.training_data
    bundled = _is_bundled_data(str(td.get("source", "")))
    cv = m.get("grouped_cv", {})
    rows: dict[str, dict[str, Any]] = {}
    if cv.get("cross_fitted"):
        rows[f"grouped {cv['k']}-fold CV, per file"] = cv["cross_fitted"]
    per_photo = cv.get("cross_fitted_per_photo")
    if per_photo:
        refitted = per_photo.get("rule") != "per_file"
        rows[f"grouped {cv['k']}-fold CV, per distinct photo{' (refitted rule)' if refitted else ''}"] = per_photo
    if m.get("validation"):
        rows["validation split (shipped threshold)"] = m["validation"]
    variants = m.get("variants", {})
    choice = m.get("precision_choice", {})
    run = m.get("training_run", {})
    bb = manifest.backbone
    lines = [
        f"# Model card: {manifest.name} {manifest.version}",
        "",
        "> **A screening aid, not a diagnostic device.** It estimates whether an external photo of an eye shows a "
        "cataract, so that a person can be referred to an eye-care professional. It does not diagnose, and a "
        '"normal" result does not rule out cataract or any other eye disease.',
        "",
        "## Intended use",
        "",
        "- Input: a colour photo of the outside of one or both eyes (phone or web photo), decoded and "
        f"{_RESIZE_WORDS[manifest.input.resize]} to {manifest.input.size}x{manifest.input.size} by the serving code. "
        f"A photo at least {SPLIT_ASPECT:g}:1 (often both eyes) is also screened as its two halves, and the most "
        "suspicious view decides: one clear eye could otherwise outvote a cataract in the other.",
        f"- Output: P(cataract), temperature-scaled (softmax of logits / T, T = {manifest.temperature:.4f}); a "
        f"referral when P(cataract) >= {manifest.threshold:g}, a threshold that favours sensitivity (how it was "
        "chosen, and what held-out photos say of it, under Metrics); a class activation map and two distances "
        "for the gradability gate.",
        "- Users: screening programmes, and people deciding whether to seek an eye examination: a referral is a "
        'reason to see an eye-care professional, and a "normal" answer is never a reason to skip or delay one.',
        "- Not for: diagnosis, grading cataract severity, slit-lamp or fundus images, children's eyes (not "
        "represented), or any clinical decision (treatment, ruling a disease out) without a clinician.",
        "",
        "## Model",
        "",
        f"- Architecture: {bb.architecture if bb else 'n/a'}; input {manifest.input.size} px, "
        f"{manifest.input.resize}, {_normalisation(manifest.input)}; precision shipped: **{manifest.precision}**.",
        f"- Pretrained weights: {bb.weights if bb else 'n/a'}.",
        f"- Licences: {bb.licence if bb else 'n/a'}",
        *(
            f"- Also offered by `cataract-train fit --backbone {other.name}`, not in this model: {other.weights}. "
            f"Licences: {other.licence}"
            for other in BACKBONES.values()
            if bb is None or other.architecture != bb.architecture
        ),
        "- Fine-tuning: the last backbone blocks and a linear head, cross-entropy with class- and "
        "duplicate-balanced sampling, AdamW, warm-up + cosine, early stopping on validation loss; augmentation: "
        "crops, zoom-out, flips, rotation, colour, and for both classes down-then-up scaling, blur and JPEG "
        "re-compression (to defeat the image-size shortcut of the data).",
        f"- Training time: {run.get('train_minutes', 'n/a')} min on {run.get('threads', 2)} CPU threads "
        f"(best epoch {run.get('best_epoch', 'n/a')} of {run.get('epochs_run', 'n/a')}).",
        "",
        "## Data provenance and its flaws",
        "",
        *_provenance_lines(td, bundled),
        "",
        "## Metrics (95% Wilson intervals)",
        "",
        *(_table(rows) if rows else ["no metrics recorded"]),
        "",
        *([block, ""] if (block := served_block(m.get("validation", {}))) else []),
        *(
            [note, ""]
            if (note := _recount_note(m.get("validation_recounted"), m.get("variants"), manifest.precision))
            else []
        ),
    ]
    if cv:
        lines += [
            f"The grouped cross-validation ({cv.get('k')} folds over duplicate groups, {cv.get('n_photos')} photos in "
            f"{cv.get('n_groups')} groups, {cv.get('epochs_per_fold')} epochs a fold) is the honest estimate: each "
            "photo is scored by a model that saw neither it nor its duplicates, and each fold's temperature and "
            "threshold are fitted on the other folds. Per file counts every copy of a duplicated photo; per distinct "
            "photo counts each duplicate group once (mean of its logits)"
            + _per_photo_rule_note(cv)
            + ". The validation column is optimistic: "
            "those photos also chose the training epoch (early stopping)"
            + _validation_files_note(m.get("training_run", {}))
            + ". Photos from other sources will likely do worse than either.",
            "",
        ]
    rob = m.get("robustness_validation", {})
    if rob:
        lines += [
            "Size/blur shortcut probe (validation photos degraded before serving): "
            + "; ".join(
                f"{name.replace('_', ' ')}: accuracy {_ci(r['accuracy'])}, sensitivity {_ci(r['sensitivity'])}"
                for name, r in rob.items()
            )
            + ". A model that had learned 'large and sharp means cataract' would lose its cataracts when shrunk. "
            "Upscaling barely changes the model's input (the letterbox brings every photo back to "
            f"{manifest.input.size} px), so that probe shows little, and the reverse shortcut (a large, sharp normal "
            "photo called cataract) is not probed: docs/training.md reports it from the cross-validation.",
            "",
        ]
    lines += _decision_lines(manifest, variants.get(manifest.precision, {}).get("calibration", {}), cv)
    lines += _meaning_lines(manifest)
    if variants:
        lines += ["## fp32 and int8", "", "| | fp32 | int8 |", "|---|---|---|"]
        f32, i8 = variants.get("fp32", {}), variants.get("int8", {})

        def g(v: dict[str, Any], *path: str, spec: str = "") -> Any:
            for p in path:
                v = v.get(p, {}) if isinstance(v, dict) else {}
            return "n/a" if v == {} else format(v, spec)

        def rate(v: dict[str, Any]) -> str:
            accuracy = (v.get("validation") or {}).get("accuracy")
            return _ci(accuracy) if accuracy else "n/a"

        lines += [
            f"| size | {g(f32, 'size_bytes')} B | {g(i8, 'size_bytes')} B |",
            f"| latency (1 thread, median) | {g(f32, 'latency', 'median_ms')} ms | "
            f"{g(i8, 'latency', 'median_ms')} ms |",
            f"| max abs logit diff vs torch | {g(f32, 'parity_vs_torch', 'max_abs_logits', spec='.2e')} | "
            f"{g(i8, 'parity_vs_torch', 'max_abs_logits', spec='.3f')} |",
            f"| validation accuracy | {rate(f32)} | {rate(i8)} |",
            f"| validation ECE | {g(f32, 'validation', 'ece')} | {g(i8, 'validation', 'ece')} |",
            "",
            *([f"No int8 variant could be built: {i8['failed']}.", ""] if "failed" in i8 else []),
            f"Shipped: **{choice.get('shipped')}**, because {choice.get('why')}.",
            "",
        ]
        q = i8.get("quantization", {})
        if q:
            recipe = (
                f"int8 recipe: onnxruntime static {q.get('format')} quantization, {q.get('weights')} weights, "
                f"{q.get('activations')} activations, MinMax over {q.get('calibration_photos')} training photos; "
                "stem and heads in float."
            )
            if q.get("reduce_range"):
                recipe += (
                    " 7-bit weights keep AVX2's 16-bit u8·s8 sums from saturating, so CPUs with and without VNNI "
                    "compute the same integers."
                )
            if i8.get("gate_heads_refit"):
                recipe += " The gate's two Gaussians were refitted on the int8 trunk's features."
            lines += [recipe, ""]
    lines += [
        "## Limitations",
        "",
        *_limitation_lines(td, bundled),
        "- Other conditions (pterygium, corneal scars, arcus, red eye) were never shown to the model; they may be "
        "called either class. Poor photos and non-eye images should be caught by the gradability gate, "
        + _gate_state(manifest, gate_section)
        + "; the distributions of its two distances on training and validation photos "
        "are in model.json under metrics.ood_distance and metrics.mid_distance. Photos blurred, darkened or "
        "flattened beyond what the model was measured to still screen are refused, and eye photos from other "
        "cameras may sit farther from the training photos than ours: watch the ungradable rate.",
        "- Probabilities were calibrated on held-out photos of the same source; on other sources they will be "
        "less reliable.",
        "",
        "## Reproduce",
        "",
        *_reproduce_lines(manifest, bundled),
        "The run folders (`runs/`) stay on the training machine; the split each run used is "
        + ("committed under `training/splits/`" if bundled else "its `split.json`")
        + ". Retraining gives a similar model, not these bytes: the sha256 below names the one served.",
        "",
        f"sha256 of model.onnx: `{manifest.sha256}`",
        "",
    ]
    if not gate_calibrated(manifest):
        lines += [_uncalibrated_gate_block(manifest), ""]
    return "\n".join(lines)


def _gate_state(manifest: Manifest, gate_section: bool) -> str:
    if not gate_calibrated(manifest):
        return GATE_UNCALIBRATED
    return GATE_BELOW if gate_section else GATE_ELSEWHERE


def gate_calibrated(manifest: Manifest) -> bool:
    """Whether model.json's gate was calibrated for these model bytes (the gate calibration records their sha256)."""
    calibration = (manifest.gate.model_extra or {}).get("calibration")
    return isinstance(calibration, dict) and calibration.get("model_sha256") == manifest.sha256


def _uncalibrated_gate_block(manifest: Manifest) -> str:
    # A block under the gate calibration's name, so that its run replaces it.
    return "\n".join(
        [
            f"<!-- BEGIN {GATE_BLOCK} (no calibration for this model yet) -->",
            "## Gradability gate: not calibrated",
            "",
            f"Not calibrated for this model (sha256 {manifest.sha256[:12]}): only the default image-statistics "
            "checks run, and they do not refuse non-eye images. Calibrate it before shipping:",
            "",
            "```",
            "python -m cataract_training.gate --model-dir <this folder> --data <photos>",
            "```",
            f"<!-- END {GATE_BLOCK} -->",
        ]
    )


def _sections(text: str) -> dict[str, str]:
    """``## `` sections of a Markdown card by title (the text before the first one is dropped)."""
    parts = text.split("\n## ")[1:]
    return {p.split("\n", 1)[0].strip(): "## " + p.rstrip() + "\n" for p in parts}


def card_text(manifest: Manifest, model_dir: Path) -> str:
    """The ``MODEL_CARD.md`` that ``write_card`` would write in ``model_dir``, keeping what other tools appended to
    an existing card; nothing is written.

    Kept verbatim: ``<!-- BEGIN name ... -->`` ... ``<!-- END name -->`` blocks (the gate calibration writes
    one), and any other ``## `` section this renderer does not produce.
    """
    path = Path(model_dir) / CARD_FILENAME
    try:
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8 (its sections and "
            "blocks are kept), or move it away to have the card written anew; nothing was written"
        ) from exc
    # A gate block stays only while model.json's gate is calibrated for this model: new bytes reset the gate.
    stale = (SERVED_BLOCK,) if gate_calibrated(manifest) else (GATE_BLOCK, SERVED_BLOCK)  # rendered anew
    kept = [m for m in _BLOCK.finditer(old) if m.group(1) not in stale]
    blocks = [m.group(0) for m in kept]
    text = render(manifest, gate_section=any(m.group(1) == GATE_BLOCK for m in kept))
    if old:
        rest = _BLOCK.sub("", old)
        ours = _sections(text)
        extra = [body for title, body in _sections(rest).items() if title not in ours]
        if extra or blocks:
            text = text.rstrip() + "\n\n" + "\n".join([*extra, *(b + "\n" for b in blocks)])
    return text


def _recount_note(recount: Any, variants: Any, shipped: str) -> str:
    """What ``evaluate.recount_validation`` changed in the validation figures since the export, and why."""
    history = recount_history(recount)
    if not history:
        return ""
    when = " and ".join(f"{r.get('date')} ({r.get('why')})" for r in history)
    moved = recount.get("moved") or {}
    what = "; ".join(f"{key} {old} → {new}" for key, (old, new) in moved.items()) or "no figure moved"
    others = sorted(k for k in (variants or {}) if k != shipped)
    kept = (
        f" The fp32/int8 table's {', '.join(others)} column keeps the export's figures (no file of it ships to "
        "recount)."
        if others
        else ""
    )
    return (
        f"The validation figures were recounted through the serving code of {when}, not the export's; since the "
        f"export: {what}.{kept} The weights, the temperature and the threshold are still the export's, fitted on the "
        "serving code before those changes (a retraining fits them on today's)."
    )


def write_card(manifest: Manifest, model_dir: Path) -> Path:
    """Write ``MODEL_CARD.md`` beside the model (``card_text``), whole or not at all."""
    path = Path(model_dir) / CARD_FILENAME
    text = card_text(manifest, model_dir)
    replace_together(path.parent, {CARD_FILENAME: lambda tmp: write_text(tmp, text)})
    return path
