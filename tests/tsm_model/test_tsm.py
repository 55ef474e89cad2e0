"""TSMConfig validation, network structure (state-dict names), TSM vs TSN behaviour."""

from __future__ import annotations

import json

import pytest
import torch

from tsm_model import FEATURE_DIMS, TSM, TemporalPool, TemporalShift, TSMConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _meta_model(**fields: object) -> TSM:
    """Structure-only model (no memory, no compute): enough for names and counts."""
    with torch.device("meta"):
        return build(TSMConfig(**{"arch": "resnet50", "num_classes": 10, **fields}))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_class_names() -> None:
    cfg = TSMConfig(arch="resnet18", num_classes=3)
    assert (cfg.num_segments, cfg.shift, cfg.shift_div, cfg.shift_place) == (8, True, 8, "blockres")
    assert (cfg.shift_mode, cfg.shift_padding) == ("bidirectional", "zero")
    assert cfg.temporal_pool is False
    assert (cfg.input_size, cfg.resize_size, cfg.dropout) == (224, 256, 0.5)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.class_names == ["class_0", "class_1", "class_2"]


def test_config_json_round_trip() -> None:
    cfg = TSMConfig(
        arch="mobilenetv2",
        num_classes=2,
        num_segments=16,
        shift_mode="unidirectional",
        mean=(0.5, 0.5, 0.5),
        class_names=["walk", "run"],
    )
    again = TSMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.mean, tuple)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "resnet152"}, "arch"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_segments": "8"}, "num_segments"),
        ({"shift_div": 1}, "shift_div"),
        ({"shift_place": "inplace"}, "shift_place"),
        ({"shift_mode": "future"}, "shift_mode"),
        ({"shift_padding": "reflect"}, "shift_padding"),
        ({"shift": 1}, "shift"),
        ({"dropout": 1.0}, "dropout"),
        ({"resize_size": 100}, "resize_size"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"class_names": ["a", "b"]}, "class_names"),
        ({"temporal_pool": True, "num_segments": 5}, "even"),
        ({"temporal_pool": True, "arch": "mobilenetv2"}, "temporal_pool"),
        ({"shift_place": "block", "arch": "mobilenetv2"}, "MobileNetV2"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    data = {"arch": "resnet18", "num_classes": 3, **changes}
    with pytest.raises(ValueError, match=message):
        TSMConfig.from_dict(data)


def test_config_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown TSM config key.*segments"):
        TSMConfig.from_dict({"arch": "resnet18", "num_classes": 3, "segments": 8})
    with pytest.raises(ValueError, match=r"missing.*num_classes"):
        TSMConfig.from_dict({"arch": "resnet18"})
    with pytest.raises(ValueError, match="unknown TSMConfig field"):
        TSMConfig(arch="resnet18", num_classes=3).replace(frames=8)


def test_build_rejects_non_config() -> None:
    with pytest.raises(TypeError):
        build({"arch": "resnet18", "num_classes": 3})  # type: ignore[arg-type]


# -------------------------------------------------------------------------- structure


@pytest.mark.parametrize("arch", sorted(FEATURE_DIMS))
def test_output_and_embedding_shapes(arch: str) -> None:
    model = _meta_model(arch=arch, num_segments=4)
    x = torch.empty(2, 4, 3, 64, 64, device="meta")
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, FEATURE_DIMS[arch])
    assert model.frame_logits(x).shape == (2, 4, 10)


@pytest.mark.parametrize("arch", sorted(FEATURE_DIMS))
def test_shift_adds_no_parameters(arch: str) -> None:
    tsm = _meta_model(arch=arch)
    tsn = _meta_model(arch=arch, shift=False)
    assert tsm.shift_modules() and not tsn.shift_modules()
    assert _params(tsm) == _params(tsn)


def test_resnet_state_dict_names_match_official_layout() -> None:
    keys = set(_meta_model().state_dict())
    assert "base_model.conv1.weight" in keys
    assert "base_model.layer1.0.conv1.net.weight" in keys
    assert "base_model.layer1.0.conv2.weight" in keys
    assert "base_model.layer1.0.downsample.0.weight" in keys
    assert {"new_fc.weight", "new_fc.bias"} <= keys
    assert not any(k.startswith("base_model.fc.") for k in keys)

    block = set(_meta_model(shift_place="block").state_dict())
    assert "base_model.layer1.0.net.conv1.weight" in block
    assert "base_model.layer4.2.net.bn3.running_var" in block

    pooled = set(_meta_model(temporal_pool=True).state_dict())
    assert "base_model.layer2.net.0.conv1.net.weight" in pooled
    assert "base_model.layer3.0.conv1.net.weight" in pooled


def test_mobilenet_state_dict_names_and_shift_points() -> None:
    model = _meta_model(arch="mobilenetv2")
    keys = set(model.state_dict())
    assert "base_model.features.3.conv.0.0.net.weight" in keys
    assert "base_model.features.2.conv.0.0.weight" in keys  # stride 2: no residual, no shift
    assert not any(k.startswith("base_model.classifier") for k in keys)
    shifted = sorted(
        int(name.split(".")[2]) for name, m in model.named_modules() if isinstance(m, TemporalShift)
    )
    # The blocks with a residual connection, as in the reference online demo.
    assert shifted == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]


def test_resnet50_shifts_every_block_resnet101_every_other() -> None:
    def shifted_blocks(model: TSM) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for name, m in model.named_modules():
            if isinstance(m, TemporalShift):
                _, stage, block, _ = name.split(".")
                found.setdefault(stage, []).append(int(block))
        return found

    r50 = shifted_blocks(_meta_model(arch="resnet50"))
    assert r50 == {"layer1": [0, 1, 2], "layer2": [0, 1, 2, 3], "layer3": list(range(6)),
                   "layer4": [0, 1, 2]}  # fmt: skip
    r101 = shifted_blocks(_meta_model(arch="resnet101"))
    assert r101 == {"layer1": [0, 2], "layer2": [0, 2], "layer3": list(range(0, 23, 2)),
                    "layer4": [0, 2]}  # fmt: skip
    # Whole-block shift has no every-other rule.
    assert len(_meta_model(arch="resnet101", shift_place="block").shift_modules()) == 33


def test_temporal_pool_halves_frames_for_later_stages() -> None:
    model = _meta_model(num_segments=8, temporal_pool=True)
    assert isinstance(model.base_model.layer2, TemporalPool)
    segments = {name.split(".")[1]: m.n_segment for name, m in model.named_modules()
                if isinstance(m, TemporalShift)}  # fmt: skip
    assert segments == {"layer1": 8, "layer2": 4, "layer3": 4, "layer4": 4}
    x = torch.empty(2, 8, 3, 64, 64, device="meta")
    assert model.frame_logits(x).shape == (2, 4, 10)
    assert model(x).shape == (2, 10)


# -------------------------------------------------------------------------- behaviour


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    # Random-init MobileNetV2 gives tiny logits, so compare relative to their scale.
    return float((a - b).abs().max() / a.abs().max())


def _small(**fields: object) -> TSM:
    torch.manual_seed(0)
    model = build(TSMConfig(**{"arch": "resnet18", "num_classes": 5, "num_segments": 4, **fields}))
    torch.nn.init.normal_(model.new_fc.weight, std=0.1)  # visible logits, not ~0
    return model.eval()


def test_consensus_is_mean_of_frame_logits(clip: torch.Tensor) -> None:
    model = _small()
    with torch.no_grad():
        frames = model.frame_logits(clip)
        assert torch.allclose(model(clip), frames.mean(1), atol=1e-6)
        assert torch.allclose(model.features(clip), model.frame_features(clip).mean(1), atol=1e-6)
        # In eval mode the classifier is linear, so it commutes with the average.
        assert torch.allclose(model.new_fc(model.features(clip)), model(clip), atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_logits_and_features_is_one_pass_of_forward_and_features(
    arch: str, clip: torch.Tensor
) -> None:
    model = build(TSMConfig(arch=arch, num_classes=5, num_segments=clip.shape[1],
                            input_size=32, resize_size=32)).eval()
    with torch.no_grad():
        logits, feats = model.logits_and_features(clip)
        torch.testing.assert_close(logits, model(clip))
        torch.testing.assert_close(feats, model.features(clip))
    assert feats.shape == (clip.shape[0], FEATURE_DIMS[arch])


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_channels_last_gives_the_same_outputs(arch: str, clip: torch.Tensor) -> None:
    """GPU actors run the model in channels_last (NHWC) memory; the shift must not depend on
    the layout: same logits and embeddings as in the default layout."""
    model = _small(arch=arch)
    with torch.no_grad():
        logits, feats = model.logits_and_features(clip)
        nhwc = model.to(memory_format=torch.channels_last)
        logits2, feats2 = nhwc.logits_and_features(clip)
    assert _rel_diff(logits, logits2) < 1e-5 and _rel_diff(feats, feats2) < 1e-5


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_tsn_ignores_frame_order_tsm_does_not(arch: str, clip: torch.Tensor) -> None:
    perm = torch.tensor([2, 0, 3, 1])
    tsn, tsm = _small(arch=arch, shift=False), _small(arch=arch)
    # Same seed, same weights (names differ by ".net"): only the shift differs.
    assert all(torch.equal(a, b) for a, b in zip(tsn.parameters(), tsm.parameters(), strict=True))
    with torch.no_grad():
        assert _rel_diff(tsn(clip), tsn(clip[:, perm])) < 1e-5
        assert _rel_diff(tsm(clip), tsm(clip[:, perm])) > 1e-3
        assert _rel_diff(tsm(clip), tsn(clip)) > 1e-3


def test_wrong_number_of_frames_is_a_clear_error(clip: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"num_segments=4.*T=3"):
        _small()(clip[:, :3])
    with pytest.raises(ValueError, match="num_segments"):
        _small(shift=False, temporal_pool=True)(clip[:, :2])
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        _small()(clip[0])
    # TSN without pooling treats frames independently: any T works.
    with torch.no_grad():
        assert _small(shift=False)(clip[:, :3]).shape == (2, 5)


def test_shift_modes_change_the_output(clip: torch.Tensor) -> None:
    outputs = []
    with torch.no_grad():
        for fields in (
            {},
            {"shift_mode": "unidirectional"},
            {"shift_padding": "circular"},
            {"shift_place": "block"},
            {"temporal_pool": True},
        ):
            outputs.append(_small(**fields)(clip))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert _rel_diff(outputs[i], outputs[j]) > 1e-3, (i, j)


def test_backward_pass_reaches_first_conv(clip: torch.Tensor) -> None:
    model = _small(arch="mobilenetv2").train()
    model(clip).sum().backward()
    grad = model.base_model.features[0][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
