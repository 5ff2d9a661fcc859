"""``cataract-train``: audit, fit, cv, export, evaluate, publish, pull, card (and ``all``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from .files import escape_unencodable_output

DEFAULT_MODEL_DIR = Path("functions/inference/model")


if TYPE_CHECKING:  # torch is imported only by the commands that train
    from .train import FitConfig


def _fit_config(args: argparse.Namespace) -> FitConfig:
    from .train import FitConfig

    known = {f.name for f in fields(FitConfig)}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    return FitConfig(**values)


def _at_least(minimum: int, *, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum`` (and, given ``at_most``, no larger)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (at_most is not None and value > at_most):
            bounds = f"at least {minimum}" if at_most is None else f"from {minimum} to {at_most}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}" if at_most is None else f"integer in [{minimum}, {at_most}]"
    return parse


def _version(text: str) -> str:
    """An argparse type: a model version, which names an S3 folder and ends the model card's title."""
    from cataract_inference.manifest import version_problem

    problem = version_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


# The fit flags that mean nothing to `cv` (cv.FIT_ONLY, named here so that parsing needs no torch): each fold
# trains a fixed --fold-epochs and has no validation split.
NOT_CV_FLAGS = {"epochs": "--epochs", "patience": "--patience", "val_fraction": "--val-fraction"}


def _add_fit_args(p: argparse.ArgumentParser, *, cv: bool = False) -> None:
    p.add_argument("data", help="image folder: DATA/<class>/* or DATA/[processed_images/]{train,test}/<class>/*")
    p.add_argument("--backbone", choices=["mobilenet_v2", "efficientnet_lite0"])
    p.add_argument("--size", type=int, help="input side in pixels (default 224)")
    p.add_argument("--resize", choices=["letterbox", "squash", "center_crop"])
    # cv still parses NOT_CV_FLAGS, unlisted, so that main can say why it refuses them (argparse would only
    # call them unrecognized).
    hidden = argparse.SUPPRESS if cv else None
    p.add_argument("--epochs", type=_at_least(1), help=hidden)
    p.add_argument("--patience", type=_at_least(1), help=hidden)
    p.add_argument("--batch-size", dest="batch_size", type=_at_least(1))
    p.add_argument("--trainable-blocks", dest="trainable_blocks", type=_at_least(0))
    p.add_argument("--val-fraction", dest="val_fraction", type=float, help=hidden)
    p.add_argument("--seed", type=_at_least(0, at_most=2**32 - 1))
    p.add_argument("--threads", type=_at_least(1))
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where run folders go (default runs/)")


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a data folder and write audit.json + audit.txt."""
    from .audit import run_audit, summary_text, write_report

    result = run_audit(Path(args.data))
    js, txt = write_report(result, Path(args.out))
    print(summary_text(result.report))
    print(f"\nreport: {js}  summary: {txt}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fine-tune on a grouped split; prints the run folder."""
    from .train import fit

    run = fit(_fit_config(args), args.runs)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    print(f"run: {run}  best epoch {m['best_epoch']}/{m['epochs_run']}  {m['train_minutes']} min of training")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """Grouped k-fold cross-validation of the recipe."""
    from .cv import run_cv

    run = run_cv(_fit_config(args), k=args.folds, epochs=args.fold_epochs, runs_dir=args.runs)
    cv = json.loads((run / "cv.json").read_text(encoding="utf-8"))
    print(_one_line("grouped CV (cross-fitted T and threshold)", cv["cross_fitted"]))
    print(f"cv: {run / 'cv.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run as ONNX fp32 + int8, calibrate, evaluate, write the chosen model and manifest."""
    from .release import release

    metrics = release(
        Path(args.run),
        Path(args.out),
        precision=args.precision,
        cv_json=args.cv,
        version=args.version,
        reason=args.reason,
    )
    print(_one_line("validation", metrics["validation"]))
    print(f"shipped {metrics['precision_choice']['shipped']}: {metrics['precision_choice']['why']}")
    print(f"model: {Path(args.out) / 'model.onnx'}")
    return 0


def _split_photos(path: Path, subset: str) -> list[str]:
    """The photo paths a split file lists under ``subset``; a ValueError naming the file otherwise."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--split-file {path} is not JSON: {exc}") from exc
    photos = split.get(subset) if isinstance(split, dict) else None
    if not isinstance(photos, list) or not all(isinstance(p, str) for p in photos):
        raise ValueError(
            f"--split-file {path} is not a split file: it needs a {subset!r} list of photo paths (a run's "
            "split.json, or one under training/splits/)"
        )
    return photos


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate an exported model folder on a labelled image folder, through the serving classifier."""
    from .data import check_classes, discover
    from .evaluate import evaluate_folder, robustness
    from .metrics import json_ready

    samples = discover(Path(args.data), tuple(s.lower() for s in args.splits) if args.splits else None)
    if args.split_file:
        # Only the photos a run held out (e.g. its validation split), by their paths relative to DATA.
        keep = set(_split_photos(Path(args.split_file), args.subset))
        samples = [s for s in samples if s.key(Path(args.data)) in keep]
    if not samples:
        raise ValueError(f"no photos to evaluate in {args.data} (check --splits, --split-file and DATA)")
    check_classes(samples, all_needed=False)  # a folder named otherwise would be scored as "normal"
    report = evaluate_folder(
        Path(args.model_dir),
        [s.path for s in samples],
        [s.label for s in samples],
        plot_dir=Path(args.out) if args.out else None,
    )
    print(_one_line("evaluation", report))
    if args.degrade:
        report["robustness"] = robustness(Path(args.model_dir), [s.path for s in samples], [s.label for s in samples])
        for name, r in report["robustness"].items():
            print(
                f"  {name}: accuracy {r['accuracy']['value']} sensitivity {r['sensitivity']['value']} "
                f"specificity {r['specificity']['value']}"
            )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        text = json.dumps(json_ready(report), indent=2, allow_nan=False)
        (Path(args.out) / "evaluation.json").write_text(text + "\n", encoding="utf-8")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Upload a model folder to s3://BUCKET/PREFIX/<version>/ and move latest.json."""
    from .publish import MODEL_S3_URI_MAX_LENGTH, publish

    pointer = publish(Path(args.model_dir), args.uri, make_latest=args.make_latest)
    print(json.dumps(pointer, indent=2))
    # The version's folder without its slash, not .../model.onnx: the template caps ModelS3Uri, and this form fits
    # every bucket name CloudFormation generates (63 characters at most) under the default prefix for a version
    # of up to 22 characters (MobileNetV2's default; EfficientNet's are 23, and a run's same-second suffix adds 2 or
    # more: those may need the warning below).
    folder_uri = pointer["model_uri"].rsplit("/", 1)[0]
    if len(folder_uri) > MODEL_S3_URI_MAX_LENGTH:
        print(
            f"warning: {folder_uri} is {len(folder_uri)} characters; the template's ModelS3Uri takes at most "
            f"{MODEL_S3_URI_MAX_LENGTH}. Publish under a shorter prefix (and set ModelS3Prefix to it) or a shorter "
            "version, or deploy under a shorter stack name (the model bucket's name starts with it).",
            file=sys.stderr,
        )
    # One quoted list: unquoted, the shell would pass ModelS3VersionId= bare, which SAM CLI refuses. The empty
    # version id clears one pinned for an earlier model (a parameter left out keeps its previous value).
    overrides = (
        f"ModelS3Uri={folder_uri} ModelSha256={pointer['sha256']} "
        f'ModelManifestSha256={pointer["manifest_sha256"]} ModelS3VersionId=""'
    )
    print(
        f"serve it with: sam deploy --parameter-overrides '{overrides}'\n"
        f"or bake it in with: cataract-train pull ... --version {pointer['version']} --sha256 {pointer['sha256']} "
        f"--manifest-sha256 {pointer['manifest_sha256']}"
    )
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Fetch a published version (or latest) into the function's model/ folder, verified."""
    from .publish import pull

    pulled = pull(
        args.uri, Path(args.model_dir), args.version, sha256=args.sha256, manifest_sha256=args.manifest_sha256
    )
    print(json.dumps(pulled, indent=2))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    """(Re)write MODEL_CARD.md from a model folder's model.json."""
    from cataract_inference.manifest import load_manifest

    from .card import write_card

    model_dir = Path(args.model_dir)
    print(write_card(load_manifest(model_dir / "model.json"), model_dir))
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    """fit (which audits the data first) -> cv -> export, in one go."""
    from .cv import check_folds, run_cv
    from .release import release
    from .train import fit, prepare

    cfg = _fit_config(args)
    if args.folds == 1:
        raise ValueError("--folds must be 0 (no cross-validation) or at least 2")
    # The folds are checked before a fit's minutes are spent; fit and cv share this audit (export audits again).
    prep = prepare(cfg)
    if args.folds > 1:
        check_folds(prep, args.folds)
    run = fit(cfg, args.runs, prepared=prep)
    cv_json = None
    if args.folds > 1:
        cv_json = run_cv(cfg, k=args.folds, epochs=args.fold_epochs, runs_dir=args.runs, prepared=prep) / "cv.json"
    args.stage = "export"  # what Ctrl-C from here on leaves is export's
    metrics = release(run, Path(args.out), cv_json=cv_json)
    print(_one_line("validation", metrics["validation"]))
    if "grouped_cv" in metrics:
        print(_one_line("grouped CV", metrics["grouped_cv"]["cross_fitted"]))
    return 0


def _one_line(title: str, r: dict) -> str:
    def f(name: str) -> str:
        m = r[name]
        return f"{name} {m['value']} [{m['ci95'][0]}, {m['ci95'][1]}]" if m["ci95"] else f"{name} n/a"

    # One class alone (evaluate takes it): PPV and NPV would only restate it, and AUC is undefined.
    one_class = not (r["sensitivity"]["ci95"] and r["specificity"]["ci95"])
    parts = [f(n) if not (one_class and n in ("ppv", "npv")) else f"{n} n/a" for n in RATES]
    auc = r["roc_auc"]
    shown = "n/a" if auc is None or math.isnan(auc) else auc  # NaN: one class
    return f"{title}: n={r['n']} " + ", ".join(parts) + f", AUC {shown}, ECE {r['ece']}"


RATES = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    parser = argparse.ArgumentParser(prog="cataract-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("audit", help=cmd_audit.__doc__)
    p.add_argument("data")
    p.add_argument("--out", default="runs/audit", help="folder for audit.json and audit.txt")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("fit", help=cmd_fit.__doc__)
    _add_fit_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("cv", help=cmd_cv.__doc__)
    _add_fit_args(p, cv=True)
    p.add_argument("--folds", type=_at_least(2), default=5)
    p.add_argument(
        "--fold-epochs", dest="fold_epochs", type=_at_least(1), default=10, help="epochs each fold trains (default 10)"
    )
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument("run", help="a run folder made by `fit`")
    p.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto")
    p.add_argument("--reason", help="why --precision overrides the measured choice (recorded in the card)")
    p.add_argument("--cv", type=Path, help="cv.json from `cv`, recorded in the manifest")
    p.add_argument(
        "--version",
        type=_version,
        help="default: the run's date, backbone and time, e.g. 2026.11.29-mnv2-101500-2 for run "
        "20261129-101500-mobilenet_v2-2 (letters, digits, '.', '_', '-')",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__)
    p.add_argument("data")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--splits", nargs="*", help="only these split folders (e.g. test)")
    p.add_argument("--out", help="folder for evaluation.json and plots")
    p.add_argument("--split-file", help="a run's split.json: evaluate only its --subset photos")
    p.add_argument("--subset", default="val", choices=["train", "val"])
    p.add_argument("--degrade", action="store_true", help="also score shrunk/JPEG, upscaled and blurred copies")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("publish", help=cmd_publish.__doc__)
    p.add_argument("uri", help="s3://BUCKET/PREFIX")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.add_argument(
        "--make-latest",
        action="store_true",
        help="move latest.json to this version even if a newer one was published since (a rollback)",
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("pull", help=cmd_pull.__doc__)
    p.add_argument("uri", help="s3://BUCKET/PREFIX")
    p.add_argument("--version", help="default: the version latest.json names")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--sha256", help="model.onnx's sha256 as publish printed it: refuses anything else")
    p.add_argument("--manifest-sha256", help="model.json's sha256 as publish printed it: refuses anything else")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("card", help=cmd_card.__doc__)
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("all", help=cmd_all.__doc__)
    _add_fit_args(p)
    p.add_argument("--folds", type=_at_least(0), default=5, help="cross-validation folds; 0 skips it")
    p.add_argument("--fold-epochs", dest="fold_epochs", type=_at_least(1), default=10)
    p.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    p.set_defaults(func=cmd_all)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cataract-train``."""
    escape_unencodable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "cv":
        given = [flag for dest, flag in NOT_CV_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            parser.error(
                f"cv does not take {', '.join(given)}: each fold trains for exactly --fold-epochs (default 10), with "
                "no validation split to stop early on; drop them (cv.json would record values nothing used)"
            )
    # Checked before any work: export would otherwise train, quantize and evaluate, then fail on its --out.
    for flag in ("out", "runs"):
        folder = getattr(args, flag, None)
        problem = None if folder is None else folder_problem(f"--{flag}", Path(folder))
        if problem:
            parser.error(problem)
    from cataract_inference.model_source import ModelLoadError

    from .publish import PublishError

    try:
        return int(args.func(args))
    except (PublishError, ModelLoadError, OSError, ValueError) as exc:
        # OSError: a missing folder, an --out that is a file, ...; ValueError: data or arguments that cannot work.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .backbones import WeightsUnavailableError  # only a run that imported torch can raise it

        if not isinstance(exc, WeightsUnavailableError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_after_interrupt(args)}", file=sys.stderr)
        return 130


def folder_problem(flag: str, folder: Path) -> str | None:
    """Why ``folder`` cannot be created and written to, or None; nothing is created."""
    if folder.exists() and not folder.is_dir():
        return f"{flag} {folder} is a file; give a folder"
    existing = folder
    while not existing.exists():  # ends at "." or "/" at the latest
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {folder} cannot be created: {existing} is a file; give a folder that is not under a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"{flag} {folder} cannot be written: no write permission on {existing}; give a folder you can write to, "
            "or fix its permissions"
        )
    return None


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command left behind, and what to do about it."""
    from cataract_inference.manifest import MANIFEST_FILENAME, ManifestError, load_manifest

    from .publish import LATEST

    if args.command == "publish":
        try:
            version = load_manifest(Path(args.model_dir) / MANIFEST_FILENAME).version
        except ManifestError:
            version = "<version>"
        return (
            f"{args.uri.rstrip('/')}/{version}/ may be half-published ({LATEST} moves only after all three files "
            f"are up, so it still names the version before). Run the same publish again with {args.model_dir} "
            "unchanged: it uploads only what is missing"
        )
    if args.command == "pull":
        return (
            f"{args.model_dir} keeps its previous files unless the three verified ones were being moved in; run the "
            "same pull again"
        )
    if args.command == "export" or getattr(args, "stage", None) == "export":
        return (
            f"{args.out} keeps its previous model.onnx, model.json and MODEL_CARD.md unless they were being replaced "
            "at the very end; run the same export again"
        )
    if args.command in ("fit", "cv", "all"):
        return "an unfinished run folder has no model.pt (fit) or cv.json (cv), and export refuses it"
    return "run the same command again"


if __name__ == "__main__":
    sys.exit(main())
