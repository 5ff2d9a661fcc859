"""Fit: fine-tune a pretrained backbone on an audited, grouped split, on a small CPU.

Every photo is decoded once through the serving decoder and cached (training photos as PIL images
for augmentation, validation photos as the exact serving tensors). Training tensors come from
``augment`` followed by ``imaging.preprocess``, the function serving calls.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

from cataract_inference.imaging import preprocess
from cataract_inference.manifest import InputSpec

from . import data
from .audit import AuditResult, run_audit
from .augment import AugmentConfig, augment
from .backbones import BACKBONES, CataractNet
from .splits import grouped_split

CLASSES = data.CLASSES


# FitConfig's fields that `cataract-train fit` takes as flags (--batch-size for batch_size, and so on).
FIT_FLAGS = (
    "backbone",
    "size",
    "resize",
    "epochs",
    "patience",
    "batch_size",
    "trainable_blocks",
    "val_fraction",
    "seed",
)


@dataclass
class FitConfig:
    """Everything that defines a training run; saved as the run's ``config.json``."""

    data: str
    backbone: str = "mobilenet_v2"
    size: int = 224
    resize: Literal["letterbox", "squash", "center_crop"] = "letterbox"
    epochs: int = 18
    patience: int = 5
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_trunk: float = 3e-4
    weight_decay: float = 1e-4
    dropout: float = 0.2
    trainable_blocks: int = 8
    val_fraction: float = 0.2
    seed: int = 1234
    cache_side: int = 320
    threads: int = 2
    max_train_batches: int | None = None  # for smoke tests
    pretrained: bool = True
    augment: dict[str, Any] = field(default_factory=lambda: AugmentConfig().to_dict())

    def __post_init__(self) -> None:
        # Refuse what would train nothing, or badly, without saying so (epochs 0 used to ship an untrained head).
        positive = {"epochs": self.epochs, "patience": self.patience, "batch_size": self.batch_size}
        positive |= {"threads": self.threads, "cache_side": self.cache_side}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.trainable_blocks < 0:
            raise ValueError(f"trainable_blocks must be 0 or more, got {self.trainable_blocks}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        for name in ("lr_head", "lr_trunk"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        try:
            self.spec()
        except ValidationError as exc:  # one line naming the setting, not pydantic's report
            err = exc.errors()[0]
            raise ValueError(f"{err['loc'][0]} {err['input']!r}: {err['msg']}") from None
        # Absolute, so that `export` finds the data from any working directory.
        self.data = str(Path(self.data).expanduser().resolve())

    def spec(self) -> InputSpec:
        """The input spec this run trains for (and the manifest will carry)."""
        info = BACKBONES[self.backbone]
        return InputSpec(size=self.size, resize=self.resize, mean=info.mean, std=info.std)

    def augment_config(self) -> AugmentConfig:
        """The augmentation settings as a dataclass."""
        raw = dict(self.augment)
        for k, v in raw.items():
            if isinstance(v, list):
                raw[k] = tuple(v)
        return AugmentConfig(**raw)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU runs are then repeatable for a given thread count)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


FEW_DISTINCT_PHOTOS = 10  # of a class: below it, training warns that its figures mean little


@dataclass
class Prepared:
    """The audited data set: usable samples, labels, groups and caches."""

    audit: AuditResult
    index: list[int]  # audit sample indices in use (readable, not conflicting)
    labels: np.ndarray  # class index per used sample
    groups: list[int]
    keys: list[str]
    images: list[Image.Image]  # cached, long side <= data.cached_side(...)
    tensors: np.ndarray  # exact serving tensors, (n, 3, S, S)


def prepare(cfg: FitConfig, progress: bool = True) -> Prepared:
    """Audit the data folder, drop unreadable and conflicting photos, and cache every photo once.

    A ``test`` split folder (Kaggle's layout) is audited but never trained on: it stays held out for
    ``evaluate --splits test``, and so do copies of its photos found in other folders. Photos in other split
    folders (``val/``...) join the training pool, from which ``fit`` draws its own grouped validation split.
    """
    # Folder names first: a misnamed class is refused before a minute of auditing.
    data.check_classes(data.discover(Path(cfg.data)), CLASSES)
    result = run_audit(Path(cfg.data), progress=progress)
    held_out_groups = {g for s, g in zip(result.samples, result.groups, strict=True) if s.split in data.HELD_OUT_SPLITS}
    pool = [i for i in result.usable() if result.samples[i].split not in data.HELD_OUT_SPLITS]
    # A copy of a test photo in train/ would be learnt, then scored as unseen by `evaluate --splits test`.
    index = [i for i in pool if result.groups[i] not in held_out_groups]
    copies = [result.keys[i] for i in pool if result.groups[i] in held_out_groups]
    held_out = sum(1 for s in result.samples if s.split in data.HELD_OUT_SPLITS)
    if progress and held_out:
        print(f"held out: {held_out} photos in test split folders (evaluate them with --splits test)", flush=True)
    if copies:
        print(
            f"held out with them: {len(copies)} photos outside test/ that are copies (exact, near or reframed) of a "
            f"test photo, e.g. {copies[0]}: training on them would leak into the test figures",
            flush=True,
        )
    pooled = Counter(result.samples[i].split for i in index if result.samples[i].split != "train")
    if progress and pooled:
        print(
            f"pooled for training: {dict(pooled)} photos from split folders other than train/ "
            "(fit draws its own grouped validation split from the pool)",
            flush=True,
        )
    # After unreadable, conflicting and held-out photos are gone: a class with none left cannot be learnt.
    label_of = dict(zip(result.keys, (s.label for s in result.samples), strict=True))
    for name in CLASSES:
        if not any(result.samples[i].label == name for i in index):
            unreadable = [u for u in result.report["unreadable"] if label_of[u["file"]] == name]
            raise ValueError(
                f"no usable {name} photos: every one is unreadable, also filed under another class, or in (or a "
                "copy of a photo in) a test split folder (see `cataract-train audit`)"
                + (f"; unreadable, e.g. {unreadable[0]['file']}: {unreadable[0]['error']}" if unreadable else "")
            )
    distinct = {name: len({result.groups[i] for i in index if result.samples[i].label == name}) for name in CLASSES}
    few = {name: n for name, n in distinct.items() if n < FEW_DISTINCT_PHOTOS}
    if few:
        print(
            f"warning: only {few} distinct photos: a model can be fitted, but every figure it reports rests on a "
            "handful of photos (its intervals say how little they show). Aim for 30+ distinct photos of each class.",
            file=sys.stderr,
            flush=True,
        )
    spec = cfg.spec()
    images, tensors = [], []
    for i in tqdm(index, desc="cache", disable=not progress, unit="img"):
        path = result.samples[i].path
        images.append(data.load_pil(path, cfg.cache_side, fill=spec.fill_rgb, spec=spec))
        tensors.append(data.serving_tensor(path, spec))
    labels = np.array([CLASSES.index(result.samples[i].label) for i in index], dtype=np.int64)
    return Prepared(
        audit=result,
        index=index,
        labels=labels,
        groups=[result.groups[i] for i in index],
        keys=[result.keys[i] for i in index],
        images=images,
        tensors=np.stack(tensors).astype(np.float32),
    )


def sample_weights(labels: np.ndarray, groups: list[int]) -> np.ndarray:
    """Each class equally likely, and within it each distinct photo (not each copy) equally likely."""
    group_size = Counter(groups)
    distinct_per_class = Counter((lab, g) for lab, g in zip(labels.tolist(), groups, strict=True))
    photos_per_class = Counter(lab for lab, _ in distinct_per_class)
    w = np.array([1.0 / group_size[g] / photos_per_class[lab] for lab, g in zip(labels.tolist(), groups, strict=True)])
    return w / w.sum()


def build_model(cfg: FitConfig) -> CataractNet:
    """The network for ``cfg``, with its early blocks frozen."""
    model = CataractNet(cfg.backbone, n_classes=len(CLASSES), dropout=cfg.dropout, pretrained=cfg.pretrained)
    model.freeze_trunk(cfg.trainable_blocks)
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, tensors: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for preprocessed tensors, in eval mode."""
    model.eval()
    out = [model(torch.from_numpy(tensors[i : i + batch])).numpy() for i in range(0, len(tensors), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), dtype=np.float32)


def _batches(weights: np.ndarray, n_draws: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    draws = rng.choice(len(weights), size=n_draws, replace=True, p=weights)
    return [draws[i : i + batch] for i in range(0, n_draws, batch)]


def train_model(  # noqa: PLR0917 - the data arrays are positional by nature
    cfg: FitConfig,
    images: list[Image.Image],
    labels: np.ndarray,
    groups: list[int],
    val_tensors: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    *,
    epochs: int | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> tuple[CataractNet, list[dict[str, float]], int]:
    """Train; with validation data, keep the epoch with the lowest validation loss and stop early.

    Returns the model (best weights loaded), the per-epoch history and the best epoch (1-based).
    """
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    spec = cfg.spec()
    aug = cfg.augment_config()
    rng = random.Random(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    model = build_model(cfg)
    head = list(model.head.parameters())
    trunk = [p for p in model.features.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": head, "lr": cfg.lr_head}, {"params": trunk, "lr": cfg.lr_trunk}], weight_decay=cfg.weight_decay
    )
    n_epochs = epochs or cfg.epochs
    weights = sample_weights(labels, groups)
    per_epoch = math.ceil(len(labels) / cfg.batch_size)
    if cfg.max_train_batches:
        per_epoch = min(per_epoch, cfg.max_train_batches)
    total_steps = n_epochs * per_epoch
    base = [g["lr"] for g in opt.param_groups]
    warm = per_epoch  # one epoch of linear warm-up, then cosine decay
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, since_best = math.inf, 0, None, 0
    step = 0
    for epoch in range(1, n_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        batches = _batches(weights, per_epoch * cfg.batch_size, cfg.batch_size, np_rng)[:per_epoch]
        run_loss, run_correct, seen = 0.0, 0, 0
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{n_epochs}", disable=not progress, unit="batch", leave=False)
        for idx in bar:
            x = torch.from_numpy(np.stack([preprocess(augment(images[i], rng, aug, spec.fill_rgb), spec) for i in idx]))
            y = torch.from_numpy(labels[idx])
            factor = (
                (step + 1) / warm
                if step < warm
                else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))
            )
            for g, lr in zip(opt.param_groups, base, strict=True):
                g["lr"] = lr * factor
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            run_loss += loss.item() * len(idx)
            run_correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{run_loss / seen:.3f}")
        row = {
            "epoch": epoch,
            "train_loss": run_loss / seen,
            "train_acc": run_correct / seen,
            "seconds": time.perf_counter() - t0,
        }
        if val_tensors is not None and val_labels is not None and len(val_labels):
            vl = predict_logits(model, val_tensors)
            vt = torch.from_numpy(vl)
            row["val_loss"] = float(loss_fn(vt, torch.from_numpy(val_labels)))
            row["val_acc"] = float((vl.argmax(1) == val_labels).mean())
            if row["val_loss"] < best_loss - 1e-4:
                best_loss, best_epoch, since_best = row["val_loss"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
        history.append(row)
        if progress:
            tqdm.write(f"{desc} epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        if val_tensors is not None and since_best >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    return model, history, best_epoch


def plot_curves(history: list[dict[str, float]], path: Path, best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch, train and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        ax.plot(ep, [h[f"train_{metric}"] for h in history], label="train (augmented)")
        if all(f"val_{metric}" in h for h in history):
            ax.plot(ep, [h[f"val_{metric}"] for h in history], label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label="kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def new_run_dir(base: Path, tag: str) -> Path:
    """A fresh ``runs/<timestamp>-<tag>`` folder (``-2``, ``-3``, ... when two runs start in the same second)."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 100):
        run = base / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            run.mkdir()
        except FileExistsError:
            continue
        return run
    raise FileExistsError(f"too many runs named {stem} in {base}")


def check_split(labels: np.ndarray, train: list[int], val: list[int]) -> None:
    """Both sides of the split need every class: a validation split without normals cannot pick a threshold."""
    for k, name in enumerate(CLASSES):
        n_train, n_val = int((labels[train] == k).sum()), int((labels[val] == k).sum())
        if n_train == 0 or n_val == 0:
            raise ValueError(
                f"too few {name} photos to split: {n_train} for training and {n_val} for validation "
                "(duplicates stay on one side): each side needs at least one distinct photo of each class. Add "
                "distinct photos (ideally 30+ of each class), or, if there are 2 or more distinct "
                f"{name} photos, {'raise' if n_val == 0 else 'lower'} --val-fraction"
            )


def fit(
    cfg: FitConfig, runs_dir: Path = Path("runs"), progress: bool = True, *, prepared: Prepared | None = None
) -> Path:
    """Audit, split (grouped, stratified), train with early stopping, and save the run folder.

    ``prepared``: the data as ``prepare(cfg)`` returns it, when the caller has it already.
    """
    t_start = time.perf_counter()
    prep = prepared if prepared is not None else prepare(cfg, progress)
    tr, va = grouped_split(prep.groups, prep.labels.tolist(), cfg.val_fraction, cfg.seed)
    assert not {prep.groups[i] for i in tr} & {prep.groups[i] for i in va}, "a duplicate group straddles the split"
    check_split(prep.labels, tr, va)
    # The run folder only once the data can be trained on: a refused run leaves nothing behind.
    run = new_run_dir(runs_dir, cfg.backbone)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    (run / "audit.json").write_text(json.dumps(prep.audit.report, indent=2) + "\n", encoding="utf-8")
    split = {"train": [prep.keys[i] for i in tr], "val": [prep.keys[i] for i in va]}
    (run / "split.json").write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    t_train = time.perf_counter()
    model, history, best = train_model(
        cfg,
        [prep.images[i] for i in tr],
        prep.labels[tr],
        [prep.groups[i] for i in tr],
        prep.tensors[va],
        prep.labels[va],
        progress=progress,
    )
    minutes = (time.perf_counter() - t_train) / 60
    # Weights last and by rename: a run interrupted before this has no model.pt, and export refuses it.
    torch.save(model.state_dict(), run / "model.pt.partial")
    plot_curves(history, run / "curves.png", best)
    metrics: dict[str, Any] = {
        "best_epoch": best,
        "epochs_run": len(history),
        "train_minutes": round(minutes, 2),
        "total_minutes": round((time.perf_counter() - t_start) / 60, 2),
        "threads": cfg.threads,
        "n_train": len(tr),
        "n_val": len(va),
        "train_distinct_groups": len({prep.groups[i] for i in tr}),
        "val_distinct_groups": len({prep.groups[i] for i in va}),
        "train_counts": {c: int((prep.labels[tr] == k).sum()) for k, c in enumerate(CLASSES)},
        "val_counts": {c: int((prep.labels[va] == k).sum()) for k, c in enumerate(CLASSES)},
        "excluded": {
            "unreadable": [u["file"] for u in prep.audit.report["unreadable"]],
            "conflicts": [f for c in prep.audit.report["conflicts"] for f in c["files"]],
        },
        "history": history,
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    os.replace(run / "model.pt.partial", run / "model.pt")
    if progress:
        left_out = {k: len(v) for k, v in metrics["excluded"].items() if v}
        if left_out:
            print(f"left out: {left_out} (names in {run / 'metrics.json'})", flush=True)
    return run


RUN_FILES = ("config.json", "split.json", "metrics.json", "model.pt")  # what a finished `fit` leaves


def load_run(run: Path) -> tuple[FitConfig, CataractNet]:
    """The config and trained model of a run folder (weights are loaded, no pretrained file needed)."""
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise ValueError(f"{run} is not a finished `fit` run (missing {', '.join(missing)}); run `cataract-train fit`")
    cfg = FitConfig(**json.loads((run / "config.json").read_text(encoding="utf-8")))
    model = CataractNet(cfg.backbone, n_classes=len(CLASSES), dropout=cfg.dropout, pretrained=False)
    try:
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{run / 'model.pt'} cannot be read ({exc}); the run did not finish: fit again") from exc
    model.load_state_dict(state)
    model.eval()
    return cfg, model
