"""Online (streaming) TSM equals the offline uni-directional network."""

from __future__ import annotations

import pytest
import torch

from tsm_model import TSM, OnlineTSM, TSMConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


T = 5


def _model(**fields: object) -> TSM:
    torch.manual_seed(0)
    cfg = {"arch": "resnet18", "num_classes": 4, "num_segments": T, **fields}
    model = build(TSMConfig(**{"shift_mode": "unidirectional", **cfg}))
    torch.nn.init.normal_(model.new_fc.weight, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(2, T, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Relative: random-init MobileNetV2 logits are ~1e-10.
    return bool((a - b).abs().max() <= 1e-4 * b.abs().max())


@pytest.mark.parametrize(
    "fields",
    [{}, {"shift_place": "block"}, {"arch": "mobilenetv2"}, {"shift_div": 4}],
    ids=["resnet18-blockres", "resnet18-block", "mobilenetv2", "div4"],
)
def test_online_equals_offline_unidirectional(
    fields: dict[str, object], clip: torch.Tensor
) -> None:
    model = _model(**fields)
    online = OnlineTSM(model)
    with torch.no_grad():
        offline_frames = model.frame_logits(clip)
        online_frames = online(clip)
        assert online_frames.shape == (2, T, 4)
        assert _close(online_frames, offline_frames)
        assert _close(online_frames.mean(1), model(clip))
        # The state matters: without the caches frame 2 would differ.
        online.reset()
        alone = online.step(clip[:, 2])
        assert not _close(alone, offline_frames[:, 2])


def test_step_by_step_reset_and_constant_memory(clip: torch.Tensor) -> None:
    model = _model()
    online = OnlineTSM(model)
    with torch.no_grad():
        first = torch.stack([online.step(clip[:, t]) for t in range(T)], 1)
        shapes = [tuple(c.previous.shape) for c in online._caches if c.previous is not None]
        for _ in range(3):  # a longer stream: the state does not grow
            online(clip)
        assert [tuple(c.previous.shape) for c in online._caches] == shapes
        assert len(shapes) == len(model.shift_modules()) == 8
        online.reset()
        assert torch.equal(online(clip), first)
    # Offline use of the same model is unaffected by the stream.
    assert all(m.stream is None for m in model.shift_modules())


def test_cached_slice_is_previous_frames_first_fold() -> None:
    model = _model()
    online = OnlineTSM(model)
    point, cache = online._points[0], online._caches[0]
    seen: list[torch.Tensor] = []
    hook = point.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        frames = torch.randn(3, 1, 3, 32, 32)
        online(frames.transpose(0, 1))
    hook.remove()
    fold = seen[0].shape[1] // 8
    assert seen[0][:, :fold].abs().sum() == 0  # zeros before the first frame
    assert cache.previous is not None and cache.previous.shape[1] == fold


def test_tsn_streams_without_state(clip: torch.Tensor) -> None:
    model = _model(shift=False, shift_mode="bidirectional")
    with torch.no_grad():
        assert _close(OnlineTSM(model)(clip), model.frame_logits(clip))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shift_mode": "bidirectional"}, "unidirectional"),
        ({"temporal_pool": True, "num_segments": 4}, "temporal_pool"),
        ({"shift_padding": "circular"}, "zero"),
    ],
)
def test_online_rejects_non_causal_models(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnlineTSM(_model(**fields))


def test_batch_change_mid_stream_needs_reset(clip: torch.Tensor) -> None:
    online = OnlineTSM(_model())
    with torch.no_grad():
        online.step(clip[:, 0])
        with pytest.raises(ValueError, match="reset"):
            online.step(clip[:1, 1])
        online.reset()
        assert online.step(clip[:1, 1]).shape == (1, 4)
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            online.step(clip)
