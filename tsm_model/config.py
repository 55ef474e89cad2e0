"""`TSMConfig`: everything needed to rebuild a TSM network, validated and JSON-safe."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2")
SHIFT_PLACES = ("blockres", "block")
SHIFT_MODES = ("bidirectional", "unidirectional")
SHIFT_PADDINGS = ("zero", "circular")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_int(value: object) -> bool:
    # bool is an int subclass; `num_classes: true` in a JSON file is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TSMConfig:
    """Architecture and preprocessing of one TSM (or TSN, with ``shift=False``) model.

    The config is the contract between weights and code: ``build(config)`` gives a
    network whose state-dict matches the saved weights, and the preprocessing fields
    say how frames must be prepared (shorter side to ``resize_size``, centre crop
    ``input_size``, scale to [0, 1], normalise with ``mean``/``std``).
    ``num_segments`` is a run-time choice, not a property of the weights.
    """

    arch: str
    num_classes: int
    num_segments: int = 8
    shift: bool = True
    shift_div: int = 8
    shift_place: str = "blockres"
    shift_mode: str = "bidirectional"
    shift_padding: str = "zero"
    temporal_pool: bool = False
    dropout: float = 0.5
    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_numbers()
        self._check_normalisation()
        self._check_class_names()
        self._check_combinations()

    def _check_choices(self) -> None:
        for name, allowed in (
            ("arch", ARCHS),
            ("shift_place", SHIFT_PLACES),
            ("shift_mode", SHIFT_MODES),
            ("shift_padding", SHIFT_PADDINGS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"TSMConfig.{name} must be one of {allowed}, got {value!r}")
        for name in ("shift", "temporal_pool"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TSMConfig.{name} must be a bool, got {getattr(self, name)!r}")

    def _check_numbers(self) -> None:
        minimums = {"num_classes": 1, "num_segments": 1, "shift_div": 2, "input_size": 1}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f"TSMConfig.{name} must be an int >= {minimum}, got {value!r}")
        if not _is_int(self.resize_size) or self.resize_size < self.input_size:
            raise ValueError(
                f"TSMConfig.resize_size must be an int >= input_size ({self.input_size}), "
                f"got {self.resize_size!r}"
            )
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TSMConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    def _check_normalisation(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (
                not isinstance(value, list | tuple)
                or len(value) != 3
                or not all(_is_number(v) for v in value)
            ):
                raise ValueError(f"TSMConfig.{name} must be 3 numbers (RGB), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"TSMConfig.std must be positive, got {self.std!r}")

    def _check_class_names(self) -> None:
        names = self.class_names
        if names is None or (isinstance(names, list | tuple) and len(names) == 0):
            names = [f"class_{i}" for i in range(self.num_classes)]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"TSMConfig.class_names must be a list of str, got {names!r}")
        if len(names) != self.num_classes:
            raise ValueError(
                f"TSMConfig.class_names has {len(names)} names but num_classes is "
                f"{self.num_classes}"
            )
        object.__setattr__(self, "class_names", list(names))

    def _check_combinations(self) -> None:
        if self.temporal_pool:
            if self.arch == "mobilenetv2":
                raise ValueError(
                    "temporal_pool is only defined for ResNet backbones (the reference "
                    "TSM implementation has no MobileNetV2 temporal pooling)"
                )
            if self.num_segments < 2 or self.num_segments % 2:
                raise ValueError(
                    "temporal_pool halves the frames after stage 1, so num_segments must be "
                    f"even and >= 2, got {self.num_segments}"
                )
        if self.shift and self.arch == "mobilenetv2" and self.shift_place != "blockres":
            raise ValueError(
                "MobileNetV2 only supports shift_place='blockres' (shift inside the "
                "inverted residual branch, as in the reference implementation)"
            )

    @property
    def frames_after_pool(self) -> int:
        """Frames per clip seen by the later stages and averaged by the consensus."""
        return self.num_segments // 2 if self.temporal_pool else self.num_segments

    def replace(self, **changes: Any) -> TSMConfig:
        """A copy with ``changes`` applied (validated; unknown names raise ValueError)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown TSMConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``TSMConfig.from_dict(c.to_dict()) == c``."""
        out = dataclasses.asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TSMConfig:
        """Build from a dict such as ``config.json``; unknown keys and bad values raise."""
        if not isinstance(data, dict):
            raise ValueError(f"TSM config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TSM config key(s): {', '.join(sorted(unknown))}")
        missing = {"arch", "num_classes"} - set(data)
        if missing:
            raise ValueError(f"TSM config is missing required key(s): {', '.join(sorted(missing))}")
        return cls(**data)
