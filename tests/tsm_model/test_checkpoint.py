"""Save/load round trip, official and mmaction2 import, bad checkpoints, `tsm models` CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from reference_tsm import RefTSN, official_checkpoint, randomize_
from safetensors.torch import load_file
from typer.testing import CliRunner

from jobs.cli import app
from tsm_model import (
    TSM,
    CheckpointError,
    TSMConfig,
    build,
    from_bytes,
    import_checkpoint,
    load,
    parse_official_name,
    save,
)
from tsm_model.checkpoint import parse_mmaction2_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")


T = 4


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(2, T, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-4 * b.abs().max())


def _our_model(**fields: object) -> TSM:
    cfg = {"arch": "resnet18", "num_classes": 5, "num_segments": T, **fields}
    return randomize_(build(TSMConfig(**cfg)))  # type: ignore[return-value]


# --------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path, clip: torch.Tensor) -> None:
    model = _our_model(class_names=list("abcde"))
    out = save(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text()) == model.config.to_dict()
    assert set(load_file(out / "model.safetensors")) == set(model.state_dict())

    loaded = load(out)
    assert not loaded.training
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(clip), model(clip))


def test_from_bytes_is_load_without_a_file_system(tmp_path: Path, clip: torch.Tensor) -> None:
    model = _our_model()
    out = save(model, tmp_path / "m")
    config_bytes = (out / "config.json").read_bytes()
    weights = (out / "model.safetensors").read_bytes()
    shipped = from_bytes(config_bytes, weights)
    parsed = from_bytes(model.config, weights, num_segments=2)  # a parsed config works too
    assert not shipped.training and parsed.config.num_segments == 2
    with torch.no_grad():
        assert torch.equal(shipped(clip), model(clip))
    with pytest.raises(CheckpointError, match="safetensors"):
        from_bytes(config_bytes, b"not weights")
    with pytest.raises(CheckpointError, match="invalid TSM config"):
        from_bytes(b'{"arch": "vgg", "num_classes": 2}', weights)


def test_load_overrides_run_time_fields(tmp_path: Path, clip: torch.Tensor) -> None:
    save(_our_model(), tmp_path)
    two = load(tmp_path, num_segments=2, class_names=list("vwxyz"))
    assert two.config.num_segments == 2 and two.config.class_names[0] == "v"
    with torch.no_grad():
        assert two(clip[:, :2]).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown TSMConfig field"):
        load(tmp_path, segments=2)
    with pytest.raises(CheckpointError, match="missing keys"):
        load(tmp_path, shift_place="block")


def test_load_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(_our_model(), tmp_path)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("load() must not call torch.load / pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    assert isinstance(load(tmp_path), TSM)


def test_load_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load(tmp_path / "nowhere")
    save(_our_model(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"arch": "resnet18", "num_classes": 5, "frames": 8}')
    with pytest.raises(CheckpointError, match="frames"):
        load(tmp_path)


# ------------------------------------------------------------------ official import


OFFICIAL_CASES = {
    "blockres": ("TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment4_e50.pth",
                 {"arch": "resnet18"}),
    "block": ("TSM_something_RGB_resnet18_shift4_block_avg_segment4_e45.pth",
              {"arch": "resnet18", "shift_div": 4, "place": "block"}),
    "tpool": ("TSM_kinetics_RGB_resnet18_shift8_blockres_tpool_avg_segment4_e100.pth",
              {"arch": "resnet18", "temporal_pool": True}),
    "tsn": ("TSN_kinetics_RGB_resnet18_avg_segment4_e50.pth",
            {"arch": "resnet18", "shift": False}),
    "resnet50": ("TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment4_e50.pth",
                 {"arch": "resnet50"}),
    # Every-other-block shift layout (layer3 has 23 blocks).
    "resnet101": ("TSM_kinetics_RGB_resnet101_shift8_blockres_avg_segment4_e50.pth",
                  {"arch": "resnet101"}),
    "mobilenetv2": ("TSM_something_RGB_mobilenetv2_shift8_blockres_avg_segment4_e25.pth",
                    {"arch": "mobilenetv2"}),
}  # fmt: skip


def _reference(**kwargs: object) -> RefTSN:
    torch.manual_seed(0)
    return randomize_(RefTSN(num_classes=7, num_segments=T, **kwargs))  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("case", list(OFFICIAL_CASES))
def test_official_import_matches_reference_logits(
    case: str, tmp_path: Path, clip: torch.Tensor
) -> None:
    name, kwargs = OFFICIAL_CASES[case]
    ref = _reference(**kwargs)
    path = tmp_path / name
    torch.save(official_checkpoint(ref), path)

    model = import_checkpoint(path)
    cfg = model.config
    assert not model.training
    assert (cfg.arch, cfg.num_classes, cfg.num_segments) == (kwargs["arch"], 7, T)
    assert cfg.shift == kwargs.get("shift", True)
    assert cfg.temporal_pool == kwargs.get("temporal_pool", False)
    if cfg.shift:
        assert (cfg.shift_place, cfg.shift_div) == (kwargs.get("place", "blockres"),
                                                   kwargs.get("shift_div", 8))  # fmt: skip
    with torch.no_grad():
        expected = ref(clip)
        assert _close(model(clip), expected)


def test_official_dropout_zero_classifier_inside_backbone(tmp_path: Path) -> None:
    ref = _reference(arch="resnet18")
    ckpt = official_checkpoint(ref)
    state = ckpt["state_dict"]
    assert isinstance(state, dict)
    for suffix in ("weight", "bias"):
        state[f"module.base_model.fc.{suffix}"] = state.pop(f"module.new_fc.{suffix}")
    torch.save(ckpt, tmp_path / "plain.pth")
    model = import_checkpoint(tmp_path / "plain.pth", num_segments=T)
    assert torch.equal(model.new_fc.weight, ref.new_fc.weight)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth",
            {"arch": "resnet50", "shift": True, "shift_div": 8, "shift_place": "blockres",
             "temporal_pool": False, "num_segments": 8},
        ),
        (
            "TSM_kinetics_RGB_resnet50_shift8_blockres_tpool_avg_segment8_e100.pth",
            {"arch": "resnet50", "shift": True, "shift_div": 8, "shift_place": "blockres",
             "temporal_pool": True, "num_segments": 8},
        ),
        (
            "TSN_kinetics_RGB_resnet50_avg_segment5_e50.pth",
            {"arch": "resnet50", "shift": False, "temporal_pool": False, "num_segments": 5},
        ),
        (
            "TSM_something_RGB_mobilenetv2_shift8_blockres_avg_segment8_e25.pth",
            {"arch": "mobilenetv2", "shift": True, "shift_div": 8, "shift_place": "blockres",
             "temporal_pool": False, "num_segments": 8},
        ),
        ("/zoo/TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50_dense.pth",
         {"arch": "resnet50", "shift": True, "shift_div": 8, "shift_place": "blockres",
          "temporal_pool": False, "num_segments": 16}),
        ("my_finetuned_model.pth", {}),
    ],
)  # fmt: skip
def test_parse_official_name(name: str, expected: dict[str, object]) -> None:
    assert parse_official_name(name) == expected


def test_parse_names_rejecting_unsupported_variants() -> None:
    with pytest.raises(CheckpointError, match="Flow"):
        parse_official_name("TSM_kinetics_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth")
    with pytest.raises(CheckpointError, match="non-local"):
        parse_official_name("TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_nl.pth")
    assert parse_mmaction2_name("tsm_r50_1x1x16_50e_kinetics400_rgb.pth") == {"num_segments": 16}
    assert parse_mmaction2_name("tsm_r50.pth") == {}


def test_explicit_options_beat_file_name_and_defaults(tmp_path: Path, clip: torch.Tensor) -> None:
    ref = _reference(arch="resnet18")
    named = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment8_e50.pth"
    torch.save(official_checkpoint(ref), named)
    assert import_checkpoint(named).config.num_segments == 8
    model = import_checkpoint(named, num_segments=T, class_names=[f"c{i}" for i in range(7)])
    assert model.config.num_segments == T and model.config.class_names[-1] == "c6"
    with torch.no_grad():
        assert _close(model(clip), ref(clip))

    anonymous = tmp_path / "weights.pth"
    torch.save(official_checkpoint(ref), anonymous)
    cfg = import_checkpoint(anonymous, shift_div=4).config
    assert (cfg.num_segments, cfg.shift_div) == (8, 4)


def test_options_contradicting_weights_are_errors(tmp_path: Path) -> None:
    ref = _reference(arch="resnet18", place="block")
    misnamed = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment4_e50.pth"
    torch.save(official_checkpoint(ref), misnamed)
    with pytest.raises(CheckpointError, match=r"shift_place='blockres'.*weights say.*'block'"):
        import_checkpoint(misnamed)
    # An explicit option wins over the file name, and is then checked against the weights.
    assert import_checkpoint(misnamed, shift_place="block").config.shift_place == "block"
    with pytest.raises(CheckpointError, match="temporal_pool"):
        import_checkpoint(misnamed, shift_place="block", temporal_pool=True)
    with pytest.raises(CheckpointError, match="class_names"):
        import_checkpoint(misnamed, shift_place="block", class_names=["only", "two"])


# ------------------------------------------------------------------ mmaction2 import


def _to_mmaction2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference (torchvision) keys the way mmaction2's ResNetTSM names them."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^base_model\.", "backbone.", key)
        key = re.sub(r"^new_fc\.", "cls_head.fc_cls.", key)
        key = re.sub(r"^backbone\.bn1\.", "backbone.conv1.bn.", key)
        key = re.sub(r"^backbone\.conv1\.weight$", "backbone.conv1.conv.weight", key)
        key = re.sub(r"\.conv(\d)\.(net\.)?weight$", r".conv\1.conv.\2weight", key)
        key = re.sub(r"\.bn(\d)\.", r".conv\1.bn.", key)
        key = re.sub(r"\.downsample\.0\.", ".downsample.conv.", key)
        key = re.sub(r"\.downsample\.1\.", ".downsample.bn.", key)
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("kwargs", "wrapped"),
    [({"arch": "resnet18"}, True), ({"arch": "resnet50", "place": "block", "temporal_pool": True},
                                    False)],
    ids=["r18-blockres-wrapped", "r50-block-tpool-bare"],
)  # fmt: skip
def test_mmaction2_import_matches_reference_logits(
    kwargs: dict[str, object], wrapped: bool, tmp_path: Path, clip: torch.Tensor
) -> None:
    ref = _reference(**kwargs)
    state = _to_mmaction2(ref.state_dict())
    if kwargs.get("place") == "block":
        assert "backbone.layer2.net.0.net.conv1.bn.running_mean" in state
        assert "backbone.layer1.0.net.downsample.conv.weight" in state
    else:
        assert "backbone.layer1.0.conv1.bn.running_mean" in state
        assert "backbone.layer1.0.conv1.conv.net.weight" in state
    path = tmp_path / f"tsm_imagenet-pretrained-r50_8xb16-1x1x{T}-50e_kinetics400-rgb.pth"
    torch.save({"meta": {"epoch": 50}, "state_dict": state} if wrapped else state, path)
    model = import_checkpoint(path)
    assert model.config.num_segments == T
    assert model.config.temporal_pool == kwargs.get("temporal_pool", False)
    with torch.no_grad():
        assert _close(model(clip), ref(clip))


# ------------------------------------------------------------------- bad checkpoints


class NotWeights:
    """A custom object: weights-only unpickling must refuse it."""

    def __init__(self) -> None:
        self.state_dict = {"x": 1}


class Exploit:
    """Unpickling this with plain pickle would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _ref_state(**kwargs: object) -> dict[str, torch.Tensor]:
    state = official_checkpoint(_reference(arch="resnet18", **kwargs))["state_dict"]
    assert isinstance(state, dict)
    return state


def test_non_weights_pickles_are_refused(tmp_path: Path) -> None:
    torch.save(NotWeights(), tmp_path / "object.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        import_checkpoint(tmp_path / "object.pth")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": Exploit(marker)}, tmp_path / "exploit.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        import_checkpoint(tmp_path / "exploit.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
        (b"", "not a readable PyTorch checkpoint"),
    ],
)
def test_garbage_files_are_refused(content: bytes, message: str, tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        import_checkpoint(tmp_path / "x.pth")


def test_wrong_keys_and_shapes_are_named(tmp_path: Path) -> None:
    def attempt(state: dict[str, object]) -> str:
        torch.save({"state_dict": state}, tmp_path / "c.pth")
        with pytest.raises(CheckpointError) as info:
            import_checkpoint(tmp_path / "c.pth", num_segments=T)
        return str(info.value)

    state = _ref_state()
    del state["module.base_model.layer2.1.bn2.weight"]
    assert "missing keys: base_model.layer2.1.bn2.weight" in attempt(state)

    state = _ref_state()
    state["module.base_model.layer2.1.extra.weight"] = torch.zeros(3)
    assert "unexpected keys: base_model.layer2.1.extra.weight" in attempt(state)

    state = _ref_state()
    state["module.base_model.layer3.0.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    assert re.search(r"wrong shapes: base_model\.layer3\.0\.conv2\.weight \(model "
                     r"\(256, 256, 3, 3\), file \(256, 256, 1, 1\)\)", attempt(state))  # fmt: skip

    state = _ref_state()
    state["module.new_fc.bias"] = torch.zeros(3)
    assert "new_fc.bias" in attempt(state)

    state = {k: v for k, v in _ref_state().items() if ".layer4.1." not in k}
    assert "not ResNet-18/34/50/101" in attempt(state)

    assert "unrecognised key layout" in attempt({"encoder.weight": torch.zeros(2)})
    assert "non-tensor" in attempt({**_ref_state(), "module.note": "hello"})
    assert "new_fc.weight" in attempt({k: v for k, v in _ref_state().items() if "fc" not in k})

    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        import_checkpoint(tmp_path / "tensor.pth")


# ------------------------------------------------------------------------------ CLI


runner = CliRunner()


@pytest.fixture
def official_file(tmp_path: Path) -> Path:
    path = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment8_e50.pth"
    torch.save(official_checkpoint(_reference(arch="resnet18")), path)
    return path


def test_cli_info_on_pth_and_saved_dir(official_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "info", str(official_file), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["config"]["arch"] == "resnet18" and info["config"]["num_segments"] == 8
    assert info["parameters"] == sum(p.numel() for p in build(TSMConfig(**{
        k: info["config"][k] for k in ("arch", "num_classes")})).parameters())  # fmt: skip
    # ResNet-18 is 1.82 GMACs per 224x224 frame: 8 frames, 2 FLOPs per MAC.
    assert 27 < info["gflops_per_clip"] < 31

    save(_our_model(), tmp_path / "saved")
    result = runner.invoke(app, ["models", "info", str(tmp_path / "saved")])
    assert result.exit_code == 0, result.output
    assert "arch: resnet18" in result.stdout and "GFLOPs per clip (4 x 224x224)" in result.stdout


def test_cli_import_official(official_file: Path, tmp_path: Path, clip: torch.Tensor) -> None:
    names = tmp_path / "names.txt"
    names.write_text("".join(f"action {i}\n" for i in range(7)))
    out = tmp_path / "imported"
    args = ["models", "import", str(official_file), "--out", str(out)]
    result = runner.invoke(app, [*args, "--num-segments", str(T), "--class-names", str(names)])
    assert result.exit_code == 0, result.output
    assert "resnet18" in result.stdout
    model = load(out)
    assert model.config.num_segments == T and model.config.class_names[6] == "action 6"
    with torch.no_grad():
        assert torch.equal(model(clip), import_checkpoint(official_file, num_segments=T)(clip))


@pytest.mark.parametrize(
    "extra",
    [["--shift-place", "block"], ["--temporal-pool"], ["--shift-div", "0"]],
)
def test_cli_import_errors_are_one_line(
    extra: list[str], official_file: Path, tmp_path: Path
) -> None:
    args = ["models", "import", str(official_file), "--out", str(tmp_path / "o"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cli_info_errors_are_one_line(tmp_path: Path) -> None:
    torch.save(NotWeights(), tmp_path / "object.pth")
    for target in (tmp_path / "object.pth", tmp_path / "missing.pth"):
        result = runner.invoke(app, ["models", "info", str(target)])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_deprecated_tsm_model_alias_still_works(official_file: Path, tmp_path: Path) -> None:
    """`tsm model info|import-official` run the `tsm models` commands, with a note on stderr."""
    from jobs.model_cmd import NOTE

    result = runner.invoke(app, ["model", "info", str(official_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["arch"] == "resnet18"
    assert result.stderr == NOTE + "\n"
    out = tmp_path / "imported"
    result = runner.invoke(app, ["model", "import-official", str(official_file), "--out", str(out)])
    assert result.exit_code == 0 and result.stderr == NOTE + "\n"
    assert load(out).config.arch == "resnet18"
    commands = runner.invoke(app, ["--help"]).stdout
    assert re.search(r"\bmodels\s", commands) and not re.search(r"[│|]\s+model\s", commands)
