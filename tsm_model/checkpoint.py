"""Saving and loading TSM models, and importing official / mmaction2 checkpoints.

Our format is a directory with ``model.safetensors`` (weights) and ``config.json``
(a ``TSMConfig``); loading it never unpickles anything. Foreign ``.pth`` files are
read with ``torch.load(weights_only=True)`` only, and their key layout is mapped
onto ours before a strict, shape-checked load.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from tsm_model.config import TSMConfig
from tsm_model.tsm import TSM, build

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# How many offending keys an error message lists before "... and N more".
_SHOW = 5


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe, or does not fit the model it claims to be."""


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def load_weights(model: TSM, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; mismatches raise `CheckpointError`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} (model {tuple(expected[k].shape)}, file {tuple(v.shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_listing(wrong_shape)}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not fit a {model.config.arch} TSM "
            f"(shift={model.config.shift}, place={model.config.shift_place}, "
            f"temporal_pool={model.config.temporal_pool}, "
            f"num_classes={model.config.num_classes}); " + "; ".join(problems)
        )
    model.load_state_dict(dict(state_dict), strict=True)


def save(model: TSM, directory: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``; returns it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # Write-then-rename so a killed job never leaves a half-written model behind. The
    # config is created like any file (0666 less the umask: 0644 as a rule); safetensors
    # creates the weights 0600, so they get the config's mode: readable by all, like it.
    tmp = f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_weights, tmp_config = out / (WEIGHTS_FILE + tmp), out / (CONFIG_FILE + tmp)
    try:
        tmp_config.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
        os.chmod(tmp_weights, stat.S_IMODE(tmp_config.stat().st_mode))
        os.replace(tmp_weights, out / WEIGHTS_FILE)
        os.replace(tmp_config, out / CONFIG_FILE)
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
    return out


def _parse_config(data: bytes, source: str) -> TSMConfig:
    try:
        return TSMConfig.from_dict(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: invalid TSM config: {err}") from err


def load_config(directory: str | os.PathLike[str]) -> TSMConfig:
    """Read and validate ``config.json`` from a saved model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {directory} a saved TSM model?)")
    return _parse_config(path.read_bytes(), str(path))


def from_bytes(
    config: bytes | TSMConfig, weights: bytes, *, source: str = "model", **overrides: Any
) -> TSM:
    """A model in eval mode from the two files' contents (``config.json``, ``model.safetensors``).

    What actors on other machines use: the bytes travel, no file system is
    shared. ``config`` may be an already parsed `TSMConfig`; ``overrides``
    replace config fields as in `load`. Never unpickles.
    """
    if isinstance(config, TSMConfig):
        parsed = config
    else:
        parsed = _parse_config(config, f"{source}/{CONFIG_FILE}")
    parsed = parsed.replace(**overrides)
    try:
        state_dict = load_safetensors(bytes(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{source}/{WEIGHTS_FILE}: not a readable safetensors file: {err}"
        ) from err
    model = build(parsed)
    load_weights(model, state_dict, f"{source}/{WEIGHTS_FILE}")
    return model.eval()


def load(directory: str | os.PathLike[str], **overrides: Any) -> TSM:
    """Load a saved model in eval mode; ``overrides`` replace config fields.

    ``num_segments`` is the usual override (frames per clip is a run-time choice).
    Overrides that change the architecture make the weights not fit and raise
    `CheckpointError`.
    """
    config = load_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file")
    return from_bytes(config, weights.read_bytes(), source=str(directory), **overrides)


# --------------------------------------------------------------------------- .pth import


def read_pth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.pth`` checkpoint without executing code; returns the top-level dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # the unpickler's last line names what it refused ("Unsupported global: ...")
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a weights-only checkpoint, refusing to unpickle it ({reason})"
        ) from err
    except Exception as err:
        # Truncated or foreign files fail deep inside the unpickler with whatever error
        # the bytes happen to trigger (EOFError, IndexError, RuntimeError, ...): that
        # error is chained as the cause; the message says what it means.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    return obj


def extract_state_dict(obj: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint (``obj["state_dict"]`` or ``obj`` itself)."""
    inner = obj.get("state_dict", obj)
    if not isinstance(inner, Mapping) or not inner:
        raise CheckpointError(f"{source}: no state_dict found")
    not_tensors = [str(k) for k, v in inner.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: state_dict has non-tensor entries: {_listing(not_tensors)}"
        )
    # DataParallel / DistributedDataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in inner.items()}


_OFFICIAL_NAME = re.compile(r"^(TSM|TSN)_([^_]+)_(RGB|Flow|RGBDiff)_([A-Za-z0-9]+)_(.*)$")


def parse_official_name(name: str) -> dict[str, Any]:
    """Options encoded in an official model-zoo file name; ``{}`` if it is not one.

    ``TSM_kinetics_RGB_resnet50_shift8_blockres_tpool_avg_segment8_e100.pth`` gives
    arch, shift, shift_div, shift_place, temporal_pool and num_segments.
    """
    stem = Path(name).name
    for suffix in (".pth.tar", ".pth", ".tar", ".pt"):
        stem = stem.removesuffix(suffix)
    match = _OFFICIAL_NAME.match(stem)
    if not match:
        return {}
    _, _, modality, arch, rest = match.groups()
    if modality != "RGB":
        raise CheckpointError(f"{name}: {modality} models are not supported (RGB only)")
    tokens = rest.split("_")
    if "nl" in tokens:
        raise CheckpointError(f"{name}: non-local TSM models are not supported")
    found: dict[str, Any] = {"arch": arch, "shift": False, "temporal_pool": "tpool" in tokens}
    for i, token in enumerate(tokens):
        if m := re.fullmatch(r"shift(\d+)", token):
            found.update(shift=True, shift_div=int(m.group(1)))
            if i + 1 < len(tokens):
                found["shift_place"] = tokens[i + 1]
        elif m := re.fullmatch(r"segment(\d+)", token):
            found["num_segments"] = int(m.group(1))
    return found


def parse_mmaction2_name(name: str) -> dict[str, Any]:
    """Frames per clip from an mmaction2 file name (``..._1x1x8_...`` → 8); else ``{}``."""
    m = re.search(r"(?:^|[_-])1x1x(\d+)(?:[_-]|$)", Path(name).name)
    return {"num_segments": int(m.group(1))} if m else {}


# Official MobileNetV2 Sequential indices → torchvision's nested ones.
_MBV2_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MBV2_DEPTHWISE_FIRST = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MBV2_KEY = re.compile(r"^base_model\.features\.(\d+)\.conv\.(\d+)\.(.+)$")


def _official_mobilenet_keys(sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    expanded = {m.group(1) for k in sd if (m := _MBV2_KEY.match(k)) and m.group(2) == "6"}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _MBV2_KEY.match(key)
        if not m:
            out[key] = value
            continue
        block, index, rest = m.groups()
        table = _MBV2_EXPANDED if block in expanded else _MBV2_DEPTHWISE_FIRST
        if index not in table:
            raise CheckpointError(f"{source}: unexpected MobileNetV2 key {key}")
        out[f"base_model.features.{block}.conv.{table[index]}.{rest}"] = value
    return out


_MM_RULES = (
    (re.compile(r"^backbone\."), "base_model."),
    (re.compile(r"^cls_head\.fc_cls\."), "new_fc."),
    (re.compile(r"\bconv(\d)\.conv\."), r"conv\1."),
    (re.compile(r"\bconv(\d)\.bn\."), r"bn\1."),
    (re.compile(r"\bdownsample\.conv\."), "downsample.0."),
    (re.compile(r"\bdownsample\.bn\."), "downsample.1."),
)


def _mmaction2_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("data_preprocessor."):
            continue  # normalisation constants, not weights; ours live in the config
        for pattern, repl in _MM_RULES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


_RESNET_DEPTHS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
}


def _infer_resnet(sd: dict[str, Tensor], source: str) -> dict[str, Any]:
    plain = [k.replace(".net.", ".") for k in sd]
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set(), 4: set()}
    for key in plain:
        if m := re.match(r"^base_model\.layer([1-4])\.(\d+)\.", key):
            blocks[int(m.group(1))].add(int(m.group(2)))
    bottleneck = "base_model.layer1.0.conv3.weight" in plain
    counts = tuple(len(blocks[i]) for i in range(1, 5))
    arch = _RESNET_DEPTHS.get((bottleneck, counts))
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(
            f"{source}: ResNet with {kind} blocks {counts} per stage is not ResNet-18/34/50/101"
        )
    blockres = any(re.search(r"\.conv1\.net\.weight$", k) for k in sd)
    block = any(re.match(r"^base_model\.layer\d\.(net\.)?\d+\.net\.", k) for k in sd)
    if blockres and block:
        raise CheckpointError(f"{source}: weights mix block and blockres shift layouts")
    found: dict[str, Any] = {
        "arch": arch,
        "shift": blockres or block,
        "temporal_pool": any(k.startswith("base_model.layer2.net.") for k in sd),
    }
    if found["shift"]:
        found["shift_place"] = "blockres" if blockres else "block"
    return found


def _infer(sd: dict[str, Tensor], source: str) -> dict[str, Any]:
    fc = sd.get("new_fc.weight")
    if fc is None or fc.dim() != 2:
        raise CheckpointError(f"{source}: no classifier weight new_fc.weight (2-D) found")
    if any(k.startswith("base_model.features.") for k in sd):
        found = {
            "arch": "mobilenetv2",
            "shift": any(".conv.0.0.net." in k for k in sd),
            "temporal_pool": False,
        }
        if found["shift"]:
            found["shift_place"] = "blockres"
    elif any(k.startswith("base_model.layer1.") for k in sd):
        found = _infer_resnet(sd, source)
    else:
        raise CheckpointError(
            f"{source}: unrecognised backbone (neither ResNet nor MobileNetV2 keys)"
        )
    found["num_classes"] = int(fc.shape[0])
    return found


def _to_our_layout(sd: dict[str, Tensor], source: str) -> tuple[str, dict[str, Tensor]]:
    """Detect the checkpoint family and rename its keys to ours."""
    if any(k.startswith(("backbone.", "cls_head.")) for k in sd):
        if any(k.startswith("backbone.features.") for k in sd):
            raise CheckpointError(f"{source}: only mmaction2 ResNetTSM backbones are supported")
        return "mmaction2", _mmaction2_keys(sd)
    if any(k.startswith(("base_model.", "new_fc.")) for k in sd):
        # With dropout 0 the reference keeps the classifier inside the backbone.
        renamed = {
            re.sub(r"^base_model\.(fc|classifier)\.", "new_fc.", k): v for k, v in sd.items()
        }
        if any(k.startswith("base_model.features.") for k in renamed):
            renamed = _official_mobilenet_keys(renamed, source)
        return "official", renamed
    raise CheckpointError(
        f"{source}: unrecognised key layout (expected official TSM keys "
        f"'module.base_model.*'/'new_fc.*' or mmaction2 keys 'backbone.*'/'cls_head.*'; "
        f"first keys: {_listing(list(sd))})"
    )


_STRUCTURAL = ("arch", "shift", "shift_place", "temporal_pool")


def _resolve_config(
    inferred: dict[str, Any],
    claimed: dict[str, Any],
    overrides: dict[str, Any],
    source: str,
) -> TSMConfig:
    """Weights decide the structure; explicit options beat file-name hints elsewhere."""
    for name in _STRUCTURAL:
        if name in claimed and name in inferred and claimed[name] != inferred[name]:
            raise CheckpointError(
                f"{source}: {name}={claimed[name]!r} was requested (option or file name) "
                f"but the weights say {name}={inferred[name]!r}"
            )
    fields = {**claimed, **inferred, **overrides}
    try:
        return TSMConfig.from_dict(fields)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from err


def import_checkpoint(
    path: str | os.PathLike[str],
    *,
    num_segments: int | None = None,
    shift_div: int | None = None,
    shift_place: str | None = None,
    temporal_pool: bool | None = None,
    class_names: list[str] | None = None,
    **overrides: Any,
) -> TSM:
    """Import an official TSM or mmaction2 ResNetTSM ``.pth`` as a TSM in eval mode.

    Backbone, depth, num_classes, shift on/off, shift place and temporal pooling are
    read from the weights; num_segments and shift_div come from the explicit options,
    else the file name, else the defaults (8 and 8). Options that contradict the
    weights raise `CheckpointError`. ``overrides`` set other config fields.
    """
    source = str(path)
    family, sd = _to_our_layout(extract_state_dict(read_pth(path), source), source)
    claimed = parse_official_name(source) if family == "official" else parse_mmaction2_name(source)
    explicit = {
        "num_segments": num_segments,
        "shift_div": shift_div,
        "shift_place": shift_place,
        "temporal_pool": temporal_pool,
        "class_names": class_names,
    }
    structural = {k: v for k, v in explicit.items() if v is not None and k in _STRUCTURAL}
    claimed = {**claimed, **structural}
    extra = {k: v for k, v in explicit.items() if v is not None and k not in _STRUCTURAL}
    inferred = _infer(sd, source)
    config = _resolve_config(inferred, claimed, {**extra, **overrides}, source)
    model = build(config)
    # Checkpoints from before BatchNorm counted batches lack these buffers.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    load_weights(model, sd, f"{source} ({family} layout)")
    return model.eval()
