"""Planning a label run: resolve the model, list the inputs, skip what the output holds.

    plan = plan_label(config)   # reads only: nothing is started or written
    print(plan.describe())      # what `tsm label --dry-run` shows
    summary = run_plan(plan)    # pipeline.job: Ray, the stream, the Parquet parts

Every problem with the settings, the model, the input or the output is found
here and raised as a one-line `LabelError`, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline import resume
from pipeline.contract import output_schema
from pipeline.errors import LabelError, one_line
from pipeline.listing import Listing, list_inputs
from pipeline.settings import LabelConfig
from pipeline.store import ObjectInfo


@dataclass(frozen=True)
class LabelPlan:
    """What a run will do: the model, the inputs, which of them are already done."""

    config: LabelConfig
    model: Any  # registry.versions.ModelRef: the model's name, version and local files
    model_config: Any  # tsm_model.TSMConfig, with the run's num_segments
    listing: Listing
    todo: list[ObjectInfo]
    schema: pa.Schema

    @property
    def skipped(self) -> int:
        return len(self.listing.objects) - len(self.todo)

    def describe(self) -> dict[str, object]:
        """The plan as plain values (what `--dry-run` prints)."""
        mc = self.model_config
        return {
            "input": self.config.input,
            "input_kind": self.listing.kind,
            "videos_listed": len(self.listing.objects),
            "duplicates_dropped": self.listing.duplicates,
            "invalid_rows": self.listing.invalid_rows,
            "already_done": self.skipped,
            "to_label": len(self.todo),
            "output": self.config.output,
            "model_uri": self.model.uri,
            "model_name": self.model.name,
            "model_version": self.model.version,
            "arch": mc.arch,
            "num_segments": mc.num_segments,
            "input_size": mc.input_size,
            "embedding_dim": self.schema.field("embedding").type.list_size,
        }


def _resolve_model(config: LabelConfig):
    import tsm_model
    from registry.versions import ModelNotFoundError, resolve_model

    try:
        ref = resolve_model(config.model)
    except ModelNotFoundError as e:
        raise LabelError(str(e)) from None
    except Exception as e:
        raise LabelError(f"cannot resolve model {config.model}: {one_line(e)}") from None
    try:
        model_config = tsm_model.load_config(ref.path)
        if config.num_segments is not None:
            model_config = model_config.replace(num_segments=config.num_segments)
    except (ValueError, OSError) as e:
        raise LabelError(f"model {config.model}: {one_line(e)}") from None
    return ref, model_config


def _list(config: LabelConfig) -> Listing:
    try:
        return list_inputs(config.input)
    except LabelError:
        raise
    except Exception as e:  # credentials, endpoint, permissions
        raise LabelError(f"cannot list {config.input}: {one_line(e)}") from None


def plan_label(config: LabelConfig) -> LabelPlan:
    """Resolve, list and filter; raises LabelError (one line) for any bad setting or input."""
    import tsm_model

    ref, model_config = _resolve_model(config)
    listing = _list(config)
    schema = output_schema(tsm_model.FEATURE_DIMS[model_config.arch], config.embedding_dtype)
    resume.check_schema(config.output, schema)
    done = resume.done_keys(config.output, ref.name, ref.version)
    todo = [o for o in listing.objects if (o.uri, o.version) not in done]
    return LabelPlan(config, ref, model_config, listing, todo, schema)
