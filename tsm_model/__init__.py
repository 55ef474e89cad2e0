"""TSM (Temporal Shift Module, Lin, Gan & Han, ICCV 2019) in plain PyTorch.

Public API::

    config = TSMConfig(arch="resnet50", num_classes=400)
    model = build(config)                      # random weights
    save(model, "out/model")                   # model.safetensors + config.json
    model = load("out/model", num_segments=8)  # eval mode, never unpickles
    model = from_bytes(config_json, weights)   # the same, from the two files' contents
    logits, embedding = model.logits_and_features(clip)
    model = import_checkpoint("TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth")
    stream = OnlineTSM(build(config.replace(shift_mode="unidirectional")))
    model = load(BUNDLED)                      # the small model trained on the synthetic corpus
"""

from pathlib import Path

from tsm_model.checkpoint import (
    CheckpointError,
    from_bytes,
    import_checkpoint,
    load,
    load_config,
    parse_official_name,
    save,
)
from tsm_model.config import TSMConfig
from tsm_model.online import OnlineTSM
from tsm_model.shift import TemporalPool, TemporalShift, temporal_shift
from tsm_model.tsm import FEATURE_DIMS, TSM, build

# A TSM ResNet-18 trained on the synthetic corpus by the project's own train job (see its
# README): the demo's model, and the default that works with no download.
BUNDLED = Path(__file__).parent / "bundled"

__all__ = [
    "BUNDLED",
    "FEATURE_DIMS",
    "TSM",
    "CheckpointError",
    "OnlineTSM",
    "TSMConfig",
    "TemporalPool",
    "TemporalShift",
    "build",
    "from_bytes",
    "import_checkpoint",
    "load",
    "load_config",
    "parse_official_name",
    "save",
    "temporal_shift",
]
