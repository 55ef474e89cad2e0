"""The label job's settings: each defined once, with its default, and validated here.

`LabelConfig` holds what a user chooses (the `tsm label` flags map one to one
onto its fields and take their defaults from it). The stages get what they
need through one constructor each (`DecodeSpec.from_settings`,
`ModelSpec.from_settings`), never by copying fields by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.balance import Shares
from pipeline.contract import COLUMN_NAMES, EMBEDDING_DTYPES
from pipeline.errors import check
from pipeline.listing import INPUT_SCHEMA
from pipeline.sampling import SAMPLINGS
from pipeline.sink import SinkConfig

EXPERIMENT = "tsm-label"
MAX_DECODE_TIMEOUT_S = 24 * 3600
MAX_STALL_TIMEOUT_S = 7 * 24 * 3600
MAX_WHOLE_READ_MB = 1024  # an object read whole sits in a decode task's memory
MIN_FRAME_PIXELS, MAX_FRAME_PIXELS = 64 * 64, 16384 * 16384
# cpu: every video decoded by the CPU decode tasks; dali: the model actors decode what NVIDIA
# DALI can take (NVDEC on a GPU), the rest stays on the CPU; auto: dali where it imports and
# the actors have GPUs, else cpu
DECODERS = ("auto", "cpu", "dali")


@dataclass(frozen=True)
class LabelConfig:
    """Everything a label run needs."""

    input: str
    output: str
    model: str
    num_segments: int | None = None  # None: the model's own
    sampling: str = "uniform"  # which frame of each segment: its centre, or the cheapest
    decoder: str = "auto"  # see DECODERS
    top_k: int = 5
    embeddings: bool = True
    embedding_dtype: str = "float32"
    # clips per model actor call; None: 32 on GPU (a full device), 8 on CPU (the model stage
    # gets work in smaller steps, so it waits less on decoding; CPU passes are small anyway,
    # see pipeline.model_stage.CPU_PIXELS_PER_PASS)
    batch_size: int | None = None
    gpus_per_actor: float = 0.0
    # the model stage's share of the CPUs: when none of these three is set, measured at
    # start-up from what decoding and the model cost (pipeline/balance.py); set any to
    # decide yourself (the others then default to 1 actor, 1 thread, 0 or 1 CPU reserved)
    actors: int | None = None  # model actors
    cpus_per_actor: float | None = None  # CPUs Ray reserves per actor
    torch_threads: int | None = None  # intra-op threads per actor on CPU
    bf16: bool = False
    decode_timeout_s: float = 120.0
    # S3 objects up to this size are read with one GET; larger ones with ranged GETs of
    # what the decoder reads (its index and the packets of the frames it decodes)
    whole_read_mb: float = 16.0
    # frames larger than this are refused from the header (kind too_large), so one hostile
    # file cannot exhaust a node; 4K UHD by default, and the decode tasks' memory follows
    max_frame_pixels: int = 3840 * 2160
    videos_per_decode_task: int = 4
    # end the job if no video comes out for this long (an actor crashing on every
    # retry would otherwise hold it forever); generous, for clusters that scale up
    stall_timeout_s: float = 1800.0
    # manifest columns (ids) carried into every row, as strings
    keep_columns: tuple[str, ...] = ()
    limit: int | None = None  # label at most this many videos (of those not done yet)
    # end the run with an error (parts kept, no run record) when more of its videos than
    # this share get error rows: a nightly job then fails visibly, not with a green light
    max_error_rate: float | None = None
    sink: SinkConfig = field(default_factory=SinkConfig)
    experiment: str = EXPERIMENT

    def __post_init__(self) -> None:
        seg, cpa, threads = self.num_segments, self.cpus_per_actor, self.torch_threads
        check(bool(self.input.strip()), "input is empty")
        check(bool(self.output.strip()), "output is empty")
        check(bool(self.model.strip()), "model is empty")
        check(seg is None or seg >= 1, f"segments must be >= 1, got {seg}")
        check(self.sampling in SAMPLINGS,
              f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        check(self.decoder in DECODERS,
              f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        check(self.top_k >= 1, f"top-k must be >= 1, got {self.top_k}")
        check(self.embedding_dtype in EMBEDDING_DTYPES,
              f"embedding dtype must be float32 or float16, got {self.embedding_dtype!r}")
        check(self.batch_size is None or self.batch_size >= 1,
              f"batch size must be >= 1, got {self.batch_size}")
        check(self.actors is None or self.actors >= 1, f"actors must be >= 1, got {self.actors}")
        check(self.gpus_per_actor >= 0, f"gpus per actor must be >= 0, got {self.gpus_per_actor}")
        check(cpa is None or cpa >= 0, f"cpus per actor must be >= 0, got {cpa}")
        check(threads is None or threads >= 1, f"torch threads must be >= 1, got {threads}")
        check(0 < self.decode_timeout_s <= MAX_DECODE_TIMEOUT_S,
              f"decode timeout must be in (0, {MAX_DECODE_TIMEOUT_S}] s, "
              f"got {self.decode_timeout_s}")
        check(0 < self.stall_timeout_s <= MAX_STALL_TIMEOUT_S,
              f"stall timeout must be in (0, {MAX_STALL_TIMEOUT_S}] s, got {self.stall_timeout_s}")
        check(math.isfinite(self.whole_read_mb)
              and 0 <= self.whole_read_mb <= MAX_WHOLE_READ_MB,
              f"whole read must be in [0, {MAX_WHOLE_READ_MB}] MB, got {self.whole_read_mb}")
        check(MIN_FRAME_PIXELS <= self.max_frame_pixels <= MAX_FRAME_PIXELS,
              f"max frame pixels must be in [{MIN_FRAME_PIXELS}, {MAX_FRAME_PIXELS:,}], "
              f"got {self.max_frame_pixels}")
        reserved = {*COLUMN_NAMES, *INPUT_SCHEMA.names}
        clash = [c for c in self.keep_columns if c in reserved or not c.strip()]
        check(not clash, f"--keep-columns cannot carry {', '.join(map(repr, clash))}: the "
              "output has such a column")
        check(len(set(self.keep_columns)) == len(self.keep_columns),
              "--keep-columns names a column twice")
        check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        mer = self.max_error_rate
        check(mer is None or 0 <= mer <= 1, f"max error rate must be in [0, 1], got {mer}")
        check(self.videos_per_decode_task >= 1,
              f"videos per decode task must be >= 1, got {self.videos_per_decode_task}")

    @property
    def clips_per_batch(self) -> int:
        """The model actors' batch size: the flag's, else the device's default."""
        return self.batch_size or (32 if self.gpus_per_actor > 0 else 8)

    @property
    def balanced(self) -> bool:
        """Whether the model stage's share is left to the job (no flag set it)."""
        return self.actors is None and self.cpus_per_actor is None and self.torch_threads is None

    def shares(self) -> Shares:
        """The model stage's share as the flags set it (for runs that are not balanced)."""
        gpu = self.gpus_per_actor > 0
        cpus = self.cpus_per_actor if self.cpus_per_actor is not None else (1.0 if gpu else 0.0)
        threads = self.torch_threads or (None if gpu else max(1, round(cpus or 1)))
        return Shares(self.actors or 1, cpus, threads, cpus)
