"""Batch decoding with NVIDIA DALI for the GPU model actor: bytes in, model-ready clips out.

    spec = DaliSpec.from_model_config(model_config, device="mixed", batch_size=32)
    dali = DaliBatchDecoder(spec)                    # builds the pipeline once per actor
    fallback = CpuFallback(spec.resize_size, spec.input_size)
    batch = decode_with_fallback(dali, [EncodedClip(data, indices), ...], fallback)
    batch.clips        # (n, T, 3, S, S) on the GPU: uint8, or normalised float32
    batch.decoders[i]  # "dali", or "cpu_fallback" (DALI gave up, the CPU decoder read it)
    batch.errors[i]    # None, or (ErrorKind, message) from the CPU decoder: an error row

Unlike `pipeline.decoders.Decoder` (one video, on the host), this decodes a
batch of in-memory videos whose frame indices the CPU task already chose, and
the frames never leave the device: DALI decodes (NVDEC on "mixed"), resizes
the shorter side to `resize_size` (antialiased linear), cuts the centre
`input_size` square and lays the clip out as `(T, 3, S, S)`, and torch takes
the result through DLPack. The geometry is computed in the DALI graph the way
`pipeline.transforms.resize_crop` (torchvision) computes it: the longer side
is `int(S * long / short)` and the crop offset `round((side - crop) / 2)` with
round-half-to-even, so both paths cut the same pixels.

Robustness (issue 9): one bad video fails a whole DALI batch, so a failed
batch is retried one clip at a time on a rebuilt pipeline; a GPU
out-of-memory error halves the batch instead. A clip DALI cannot read, or one
that comes back with a frame that is a single flat colour (what DALI returns
for frames past the end of a truncated file), is reported per item, never
raised, and `decode_with_fallback` decodes it with the CPU decoder in a child
process; what the CPU decoder cannot read either becomes its error row.
Inputs are checked in Python before they reach DALI, because a wrong dtype at
`external_source` breaks the pipeline until it is rebuilt.

DALI is imported only when a `DaliBatchDecoder` is made, so this module (and
`CpuFallback`) imports on machines without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.contract import DecodedBy, ErrorKind
from pipeline.decoders import DecodeError
from pipeline.errors import one_line

if TYPE_CHECKING:
    import torch

Device = Literal["mixed", "cpu"]
Output = Literal["uint8", "float"]

def dali_import_error() -> str | None:
    """None if DALI can be imported here, else why not (one line)."""
    try:
        import nvidia.dali.fn  # noqa: F401
    except Exception as e:  # ImportError, or a broken install's OSError
        return f"NVIDIA DALI is not usable: {one_line(e, with_type=True)}"
    return None


@dataclass(frozen=True)
class DaliSpec:
    """How the GPU actor decodes: DALI's device, batch, and the model's preprocessing.

    `mean`/`std` are in [0, 1] units, as in `TSMConfig`. `output="uint8"` gives
    the clips as the CPU decode stage does (normalise them with
    `pipeline.transforms.normalize`, the same code for both paths);
    `output="float"` normalises inside the DALI graph (float32).
    `device_id`: the CUDA device for "mixed" (None: torch's current device).
    """

    device: Device = "mixed"
    batch_size: int = 32
    resize_size: int = 256
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    output: Output = "uint8"
    num_threads: int = 2
    device_id: int | None = None

    def __post_init__(self) -> None:
        if self.device not in ("mixed", "cpu"):
            raise ValueError(f"DALI device must be 'mixed' or 'cpu', got {self.device!r}")
        if self.output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {self.output!r}")
        if self.batch_size < 1 or self.num_threads < 1:
            raise ValueError("batch_size and num_threads must be >= 1")
        if not 1 <= self.input_size <= self.resize_size:
            raise ValueError(f"need 1 <= input_size ({self.input_size}) <= resize_size "
                             f"({self.resize_size})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    @classmethod
    def from_model_config(cls, model_config: Any, **kwargs: Any) -> DaliSpec:
        """The preprocessing of a `tsm_model.TSMConfig`, plus DaliSpec fields as keywords."""
        return cls(resize_size=model_config.resize_size, input_size=model_config.input_size,
                   mean=tuple(model_config.mean), std=tuple(model_config.std), **kwargs)


@dataclass(frozen=True)
class EncodedClip:
    """One video to decode: its whole file in memory and the frame indices to take."""

    data: bytes | bytearray | memoryview | np.ndarray
    indices: Sequence[int] | np.ndarray


@dataclass
class DaliStats:
    """What the decoder had to do (for the run's metrics)."""

    runs: int = 0  # pipeline runs, successful or not
    rebuilds: int = 0  # pipelines rebuilt after a failure
    retried_alone: int = 0  # clips retried one by one after their batch failed
    oom_splits: int = 0  # batches halved after a GPU out-of-memory error
    flat_frames: int = 0  # clips rejected because a frame came back as one flat colour
    failed: int = 0  # clips reported as failures


@dataclass
class DaliBatch:
    """`DaliBatchDecoder.decode`'s result: row i of `clips` is valid when `errors[i]` is None
    (failed rows are zeros)."""

    clips: torch.Tensor  # (n, T, 3, S, S) on the decoder's device
    errors: list[str | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


# --------------------------------------------------------------------------- errors
_OOM = re.compile(r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation|bad_alloc"
                  r"|allocation failed|Can't allocate", re.IGNORECASE)
_ASSERT = re.compile(r'Assert on "[^"]*" failed: (.*?)(?: C\+\+ context| Stacktrace|'
                     r" Current pipeline object|$)")


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU (or pinned host) allocation failure, from DALI or torch."""
    if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    return bool(_OOM.search(str(error)))


def dali_gist(error: BaseException) -> str:
    """DALI's multi-line error as one short line: the failed check's message if there is one."""
    text = " ".join(str(error).split())
    if m := _ASSERT.search(text):
        text = m.group(1).strip()
    else:
        text = re.sub(r"^(Critical error in pipeline: )?(Error (in|when executing) \S+ operator "
                      r"`[^`]*`[^,]*, )?", "", text)
        text = text.replace(" Current pipeline object is no longer valid.", "")
    return one_line(RuntimeError(f"DALI: {text}"))


# --------------------------------------------------------------------------- inputs
_Prepared = tuple[np.ndarray, np.ndarray]


def _prepare(item: EncodedClip | tuple[Any, Any]) -> _Prepared | str:
    """(uint8 bytes, int32 indices) ready for DALI, or why the item cannot go to DALI.

    Checked here because DALI turns a bad index into a black frame (negative)
    or a padded one (too large) without an error, and a wrong dtype at its
    input breaks the pipeline for every later batch.
    """
    data, indices = (item.data, item.indices) if isinstance(item, EncodedClip) else item
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            return f"encoded data must be a 1-D uint8 array, got {data.dtype} {data.shape}"
        encoded = np.ascontiguousarray(data)
    elif isinstance(data, bytes | bytearray | memoryview):
        encoded = np.frombuffer(data, dtype=np.uint8)
    else:
        return f"encoded data must be bytes or a uint8 array, got {type(data).__name__}"
    if encoded.size == 0:
        return "the file is empty"
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        return f"frame indices must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}"
    if idx.min() < 0 or idx.max() > np.iinfo(np.int32).max:
        return f"frame indices out of range: {idx.min()}..{idx.max()}"
    return encoded, idx.astype(np.int32)


# --------------------------------------------------------------------------- the DALI graph
def _build_pipeline(spec: DaliSpec, device_id: int | None, preprocess: bool):
    """A built DALI pipeline: inputs "enc" (uint8 bytes) and "idx" (int32 indices) per sample;
    outputs (clips or raw frames, per-frame max, per-frame min)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    size, crop = spec.resize_size, spec.input_size

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def graph():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        idx = fn.external_source(name="idx", dtype=types.INT32, ndim=1)
        extra = {"affine": False} if spec.device == "mixed" else {}  # shared hosts: no pinning
        # pad_mode "constant": a frame past the end comes back flat (0) and is caught below,
        # per clip, instead of failing the whole batch ("none" raises)
        frames = fn.decoders.video(enc, frames=idx, device=spec.device, pad_mode="constant",
                                   fill_value=[0], **extra)  # (F, H, W, 3) uint8 RGB
        fmax = fn.reductions.max(frames, axis_names="HWC")  # (F,): flat frame if max == min
        fmin = fn.reductions.min(frames, axis_names="HWC")
        if not preprocess:
            return frames, fmax, fmin
        shape = frames.shape(dtype=types.INT32)  # on the CPU, also for GPU frames
        h, w = shape[1], shape[2]
        short = dmath.min(h, w)
        # torchvision's sizes: the shorter side becomes `size`, the longer int(size*long/short)
        new_h, new_w = (size * h) // short, (size * w) // short
        resized = fn.resize(frames, resize_x=fn.cast(new_w, dtype=types.FLOAT),
                            resize_y=fn.cast(new_h, dtype=types.FLOAT),
                            subpixel_scale=False, antialias=True,
                            interp_type=types.INTERP_LINEAR)
        # torchvision's centre crop: offset int(round((side - crop) / 2)), half to even
        top, left = _half_even_half(new_h - crop), _half_even_half(new_w - crop)
        cut = fn.slice(resized, start=fn.stack(top, left), shape=[crop, crop], axis_names="HW")
        if spec.output == "float":
            norm = {"mean": [m * 255.0 for m in spec.mean], "std": [s * 255.0 for s in spec.std],
                    "dtype": types.FLOAT}
        else:
            norm = {"dtype": types.UINT8}
        clips = fn.crop_mirror_normalize(cut, output_layout="FCHW", **norm)
        return clips, fmax, fmin

    pipe = graph()
    pipe.build()
    return pipe


def _half_even_half(d):
    """round(d / 2) with ties to even, for a non-negative integer DALI node `d`."""
    q = d // 2
    odd = d - 2 * q
    return q + odd * (q - 2 * (q // 2))


# --------------------------------------------------------------------------- the decoder
class DaliBatchDecoder:
    """Decodes batches of in-memory videos with DALI; per-clip failures, never a raise.

    One instance per model actor (the pipeline is built once and rebuilt only
    after a failure). `decode` raises only for a caller's mistake (clips of
    different lengths) or when its output cannot be allocated.
    """

    def __init__(self, spec: DaliSpec):
        problem = dali_import_error()
        if problem:
            raise ImportError(problem)
        import torch

        self.spec = spec
        self.stats = DaliStats()
        if spec.device == "mixed":
            if not torch.cuda.is_available():
                raise RuntimeError("DALI's mixed backend needs a CUDA GPU; none is visible")
            self.device_id = torch.cuda.current_device() if spec.device_id is None \
                else spec.device_id
            self.device = torch.device("cuda", self.device_id)
        else:
            self.device_id = None  # a CPU-only pipeline must not ask for CUDA at all
            self.device = torch.device("cpu")
        self._pipes: dict[bool, Any] = {}
        self._broken: dict[bool, str] = {}
        self._pipe(preprocess=True)  # fail at start, not on the first batch

    # ----------------------------------------------------------------- pipelines
    def _pipe(self, preprocess: bool):
        if preprocess not in self._pipes:
            self._pipes[preprocess] = _build_pipeline(self.spec, self.device_id, preprocess)
        return self._pipes[preprocess]

    def _rebuild(self, preprocess: bool, error: BaseException) -> None:
        """A fresh pipeline after a failure (a failed run may leave it unusable). If that
        fails too, the clips of this `decode` call fail at once with the reason."""
        self._pipes.pop(preprocess, None)
        if is_out_of_memory(error) and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        try:
            self._pipe(preprocess)
            self.stats.rebuilds += 1
        except Exception as e:  # e.g. the GPU is gone: every clip fails, with this reason
            self._broken[preprocess] = f"cannot rebuild the DALI pipeline: {one_line(e)}"

    def _run(self, preprocess: bool, batch: list[_Prepared]) -> list[tuple[Any, str | None]]:
        """One pipeline run: per clip (tensor on the device, or None and why it is rejected)."""
        import torch

        if preprocess in self._broken:
            raise RuntimeError(self._broken[preprocess])
        pipe = self._pipe(preprocess)
        self.stats.runs += 1
        data, fmax, fmin = pipe.run(enc=[b for b, _ in batch], idx=[i for _, i in batch])
        if self.spec.device == "mixed":
            fmax, fmin = fmax.as_cpu(), fmin.as_cpu()
        results = []
        for j, (_, idx) in enumerate(batch):
            flat = np.flatnonzero(np.asarray(fmax[j]) == np.asarray(fmin[j]))
            if flat.size:
                value = int(np.asarray(fmax[j])[flat[0]])
                self.stats.flat_frames += 1
                frames = ", ".join(str(int(k)) for k in idx[flat][:4])
                results.append((None, f"frame {frames} came back as one flat colour ({value}): "
                                      "a truncated or damaged file, or a blank frame"))
            else:
                results.append((torch.from_dlpack(data[j]), None))
        return results

    def _decode_group(self, preprocess: bool, group: list[int], prepared: list,
                      sink: Callable[[int, Any], None], errors: list[str | None]) -> None:
        """Decode `group` (positions into `prepared`): halve on out-of-memory, else retry one
        by one on a rebuilt pipeline; a clip that fails alone is a failure."""
        try:
            results = self._run(preprocess, [prepared[i] for i in group])
        except Exception as e:
            if preprocess not in self._broken:
                self._rebuild(preprocess, e)
            if len(group) == 1:
                errors[group[0]] = (f"GPU out of memory on one clip: {dali_gist(e)}"
                                    if is_out_of_memory(e) else dali_gist(e))
                return
            if is_out_of_memory(e):
                self.stats.oom_splits += 1
                half = len(group) // 2
                self._decode_group(preprocess, group[:half], prepared, sink, errors)
                self._decode_group(preprocess, group[half:], prepared, sink, errors)
                return
            self.stats.retried_alone += len(group)
            for i in group:
                self._decode_group(preprocess, [i], prepared, sink, errors)
            return
        for i, (value, problem) in zip(group, results, strict=True):
            if problem is None:
                sink(i, value)
            else:
                errors[i] = problem

    def _decode(self, preprocess: bool, prepared: list, sink) -> list[str | None]:
        self._broken.pop(preprocess, None)  # a pipeline that could not be rebuilt: try again
        errors: list[str | None] = [p if isinstance(p, str) else None for p in prepared]
        todo = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        size = self.spec.batch_size
        for start in range(0, len(todo), size):
            self._decode_group(preprocess, todo[start:start + size], prepared, sink, errors)
        self.stats.failed += sum(e is not None for e in errors)
        return errors

    # ----------------------------------------------------------------- the API
    def decode(self, items: Sequence[EncodedClip | tuple[Any, Any]]) -> DaliBatch:
        """Model-ready clips `(n, T, 3, S, S)` on the device (uint8, or float if the spec
        says so) and per-clip errors; every valid clip must ask for the same number of frames
        (ValueError otherwise: a caller's mistake, not a video's)."""
        import torch

        prepared = [_prepare(item) for item in items]
        lengths = {len(p[1]) for p in prepared if not isinstance(p, str)}
        if len(lengths) > 1:
            raise ValueError(f"every clip must ask for the same number of frames, got {lengths}")
        t = lengths.pop() if lengths else 0
        s = self.spec.input_size
        dtype = torch.uint8 if self.spec.output == "uint8" else torch.float32
        clips = torch.zeros((len(items), t, 3, s, s), dtype=dtype, device=self.device)

        def keep(i: int, clip: torch.Tensor) -> None:
            clips[i].copy_(clip)  # on the device; frees DALI's buffer for the next batch

        errors = self._decode(True, prepared, keep)
        return DaliBatch(clips, errors)

    def decode_frames(self, items: Sequence[EncodedClip | tuple[Any, Any]]
                      ) -> tuple[list[torch.Tensor | None], list[str | None]]:
        """The decoded frames themselves, `(T, H, W, 3)` uint8 RGB per clip on the device (no
        resize or crop), and per-clip errors: for checks and measurements."""
        frames: list[Any] = [None] * len(items)

        def keep(i: int, value: torch.Tensor) -> None:
            frames[i] = value.clone()

        errors = self._decode(False, [_prepare(item) for item in items], keep)
        return frames, errors


# --------------------------------------------------------------------------- CPU fallback
def _decode_on_cpu(data: bytes, indices: list[int], max_pixels: int | None):
    """The CPU decoder on in-memory bytes at the given frame indices: ("ok", frames
    (T, H, W, 3) uint8, frames decoded) or ("error", kind, message). Runs in the child, so
    it imports no torch."""
    import io

    from pipeline.decoders import decoder_for

    wanted = np.asarray(indices, dtype=np.int32)

    def sampler(index) -> np.ndarray:
        if wanted.size and int(wanted.max()) >= index.num_frames:
            raise DecodeError(ErrorKind.TRUNCATED,
                              f"frame {int(wanted.max())} asked for, but the CPU decoder finds "
                              f"{index.num_frames} frames")
        return wanted

    try:
        clip = decoder_for("cpu").decode(io.BytesIO(data), sampler, max_pixels=max_pixels)
    except DecodeError as e:
        return "error", e.kind.value, e.message
    except MemoryError:
        return "error", ErrorKind.RESOURCE_LIMIT.value, "decoding ran out of its memory cap"
    return "ok", clip.frames, clip.frames_decoded


class CpuFallback:
    """The CPU decoder (PyAV) for clips DALI could not decode, at the same frame indices.

    With `isolate=True` each call runs in a child process under a memory cap
    (`pipeline.isolation`), as in the CPU decode stage: FFmpeg crashing,
    hanging or ballooning on a hostile file then costs one clip (kinds
    "decoder_crash", "timeout", "resource_limit"), not the model actor and the
    batch it holds.
    """

    def __init__(self, resize_size: int, input_size: int, *, timeout_s: float = 120.0,
                 max_pixels: int | None = None, memory_limit: int | None = None,
                 isolate: bool = True):
        self.resize_size, self.input_size = resize_size, input_size
        self.timeout_s, self.max_pixels = timeout_s, max_pixels
        self._child = None
        if isolate:
            from pipeline.isolation import ChildProcess

            self._child = ChildProcess(warm=("pipeline.decoders.pyav",),
                                       memory_limit=memory_limit)

    def decode(self, data: bytes | bytearray | memoryview | np.ndarray,
               indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The clip `(T, 3, S, S)` uint8 on the host, cropped as the CPU decode stage crops;
        raises DecodeError."""
        from pipeline.isolation import ChildCrashed, ChildError, ChildTimeout
        from pipeline.transforms import resize_crop

        raw = bytes(data) if not isinstance(data, np.ndarray) else data.tobytes()
        if not raw:
            raise DecodeError(ErrorKind.EMPTY, "the file is empty")
        args = (raw, [int(i) for i in np.asarray(indices).tolist()], self.max_pixels)
        if self._child is None:
            result = _decode_on_cpu(*args)
        else:
            try:
                result = self._child.call(_decode_on_cpu, *args, timeout=self.timeout_s)
            except ChildTimeout:
                raise DecodeError(ErrorKind.TIMEOUT,
                                  f"CPU decode took longer than {self.timeout_s:g} s") from None
            except ChildCrashed as e:
                raise DecodeError(ErrorKind.DECODER_CRASH, str(e)) from None
            except ChildError as e:
                if e.exception_type == "MemoryError":
                    raise DecodeError(ErrorKind.RESOURCE_LIMIT,
                                      "decoding ran out of its memory cap") from None
                raise DecodeError(ErrorKind.INTERNAL, str(e)) from None
        if result[0] == "error":
            raise DecodeError(ErrorKind(result[1]), result[2])
        return resize_crop(result[1], self.resize_size, self.input_size)

    def close(self) -> None:
        if self._child is not None:
            self._child.close()


@dataclass
class ClipBatch:
    """Clips for the model with what decoded each: row i is valid when `errors[i]` is None."""

    clips: torch.Tensor  # (n, T, 3, S, S) on the device, uint8 or normalised float32
    decoders: list[DecodedBy]  # DALI, or CPU_FALLBACK (DALI gave up on the clip)
    errors: list[tuple[ErrorKind, str] | None]  # the CPU decoder's verdict when both failed
    dali_errors: list[str | None] = field(default_factory=list)  # why DALI gave a clip up


def decode_with_fallback(dali: DaliBatchDecoder, items: Sequence[EncodedClip],
                         fallback: CpuFallback) -> ClipBatch:
    """DALI first; each clip it gives up on is decoded by `fallback` and put in its row (on the
    device, normalised like the rest); a clip neither can read gets the CPU decoder's error."""
    import torch

    from pipeline.transforms import normalize

    batch = dali.decode(items)
    decoders = [DecodedBy.DALI] * len(items)
    errors: list[tuple[ErrorKind, str] | None] = [None] * len(items)
    spec = dali.spec
    for i, problem in enumerate(batch.errors):
        if problem is None:
            continue
        decoders[i] = DecodedBy.CPU_FALLBACK
        item = items[i]
        data, indices = (item.data, item.indices) if isinstance(item, EncodedClip) else item
        try:
            clip = fallback.decode(data, indices)
        except DecodeError as e:
            errors[i] = (e.kind, e.message)
            continue
        x = torch.from_numpy(clip).to(dali.device)
        if spec.output == "float":
            x = normalize(x, spec.mean, spec.std)
        batch.clips[i].copy_(x)
    return ClipBatch(batch.clips, decoders, errors, list(batch.errors))
