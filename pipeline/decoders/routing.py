"""Which decoder gets a video: NVDEC through DALI on the GPU actor, or the CPU decoder.

    probe = VideoProbe(codec="h264", profile="High", pix_fmt="yuv420p", bit_depth=8,
                       width=1920, height=1080, num_frames=250)
    route(probe)                       # Route(target="gpu", reason="...")
    route(probe, backend="dali-cpu")   # Route(target="cpu", ...): DALI's CPU backend has no H.264

The decision is data: `NVDEC_RULES` (one `CodecRule` per FFmpeg codec name, each
with the reason for its limits) checked against `NvdecCaps` (what the GPU
generation adds, from NVIDIA's NVDEC application note, Video Codec SDK 13.0),
plus `MAX_GPU_DECODE_FRAMES` (DALI decodes every frame up to the last one
asked for). Anything not listed, or not known, goes to the CPU: a wrong "cpu"
costs CPU time, a wrong "gpu" costs a failed DALI batch, a rebuild and a CPU
decode anyway (`pipeline.decoders.dali.decode_with_fallback`).

The probe is filled by the decode stage from the container (FFmpeg's names:
`codec_name`, `profile`, `pix_fmt`, `bits_per_raw_sample`, `width`, `height`,
frame count); this module imports nothing beyond the standard library, so the
CPU task can route without DALI, torch or a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Target = Literal["gpu", "cpu"]
Backend = Literal["nvdec", "dali-cpu"]


@dataclass(frozen=True)
class VideoProbe:
    """What routing needs to know about a video stream, in FFmpeg's terms.

    `codec`: FFmpeg's codec name (`h264`, `hevc`, `vp8`, `vp9`, `av1`, `mpeg4`,
    `mjpeg`, ...); `profile`: FFmpeg's profile name (`High`, `Main 10`,
    `Profile 2`, ...) or None; `pix_fmt`: FFmpeg's pixel format (`yuv420p`,
    `yuvj420p`, `yuv420p10le`, `yuv444p`, `gbrp`, ...) or None; `bit_depth`:
    bits per sample (None: taken from `pix_fmt`); `num_frames`: frames in the
    stream, or None when unknown (then the decode-cost rule cannot apply);
    `packets`: video packets a demux pass over the whole file found, or None.

    `packets < num_frames` means the file is cut short: DALI then returns the
    missing frames without an error, as stale data (a frame decoded earlier,
    possibly of another video in the batch), so such a file goes to the CPU
    decoder, which reports it as truncated. The decode stage should demux the
    bytes it fetched (no decoding: cheap) to fill `packets`.
    """

    codec: str
    profile: str | None
    pix_fmt: str | None
    bit_depth: int | None
    width: int
    height: int
    num_frames: int | None = None
    packets: int | None = None


@dataclass(frozen=True)
class Route:
    """Where a video is decoded and why (the reason goes to logs and run metrics)."""

    target: Target
    reason: str


# --------------------------------------------------------------------------- pixel formats
_CHROMA = {"420": "420", "422": "422", "444": "444", "440": "440", "411": "411", "410": "410"}


def pixel_format(pix_fmt: str | None) -> tuple[str | None, int | None]:
    """(chroma subsampling "420" / "422" / "444" / "400" / "rgb", bits per sample) of an
    FFmpeg pixel format name; (None, None) when it is not one we can read.

    `yuvj420p` (full-range JPEG YUV) counts as 4:2:0 8-bit, `nv12` as 4:2:0,
    `p010le` as 4:2:0 10-bit, `gray` as 4:0:0, `gbrp` (planar RGB) as "rgb".
    """
    if not pix_fmt:
        return None, None
    name = pix_fmt.lower()
    if name in ("nv12", "nv21"):
        return "420", 8
    if m := re.fullmatch(r"p0(10|12|16)(le|be)?", name):
        return "420", int(m.group(1))
    if m := re.fullmatch(r"gray(\d+)?(le|be)?", name):
        return "400", int(m.group(1) or 8)
    if m := re.fullmatch(r"gbra?p(\d+)?(le|be)?", name):
        return "rgb", int(m.group(1) or 8)
    if m := re.fullmatch(r"yuva?j?(4\d\d)p(\d+)?(le|be)?", name):
        chroma = _CHROMA.get(m.group(1))
        return (chroma, int(m.group(2) or 8)) if chroma else (None, None)
    return None, None


# --------------------------------------------------------------------------- the GPU
@dataclass(frozen=True)
class NvdecCaps:
    """What one GPU generation's NVDEC decodes beyond the common set (NVIDIA's NVDEC
    application note, Video Codec SDK 13.0, "NVDEC Hardware Capabilities")."""

    name: str
    av1: bool = False  # AV1 Main profile: GA10x (Ampere except A100), Ada, Blackwell
    h264_8k: bool = False  # H.264 up to 8192x8192: Blackwell only (4096x4096 before)


# compute capability (major, minor) -> caps; an unknown GPU gets CONSERVATIVE
CONSERVATIVE = NvdecCaps("conservative (any Volta or newer)")
_VOLTA = NvdecCaps("Volta")
_TURING_GA100_HOPPER = NvdecCaps("Turing / A100 / Hopper")  # no AV1 on these (the note's table)
_GA10X_ADA = NvdecCaps("Ampere GA10x / Ada", av1=True)
_BLACKWELL = NvdecCaps("Blackwell", av1=True, h264_8k=True)
CAPS_BY_COMPUTE_CAPABILITY: dict[tuple[int, int], NvdecCaps] = {
    (7, 0): _VOLTA,  # V100
    (7, 2): _VOLTA,
    (7, 5): _TURING_GA100_HOPPER,  # T4
    (8, 0): _TURING_GA100_HOPPER,  # A100
    (8, 6): _GA10X_ADA,  # A10, A40, RTX 30
    (8, 7): _GA10X_ADA,
    (8, 9): _GA10X_ADA,  # L4, L40, RTX 40
    (9, 0): _TURING_GA100_HOPPER,  # H100, H200
    (10, 0): _BLACKWELL,  # B200
    (10, 3): _BLACKWELL,
    (12, 0): _BLACKWELL,  # RTX 50, RTX PRO 6000
}


def caps_for(compute_capability: tuple[int, int] | None) -> NvdecCaps:
    """The caps of a GPU by its CUDA compute capability (`torch.cuda.get_device_capability()`);
    CONSERVATIVE for None or one this table does not know."""
    if compute_capability is None:
        return CONSERVATIVE
    return CAPS_BY_COMPUTE_CAPABILITY.get(tuple(compute_capability), CONSERVATIVE)


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class CodecRule:
    """When NVDEC (through DALI's mixed backend) takes a codec; `reason` says why."""

    codec: str
    chroma: frozenset[str]
    bit_depths: frozenset[int]
    profiles: frozenset[str] | None  # FFmpeg profile names allowed; None: any profile
    min_width: int
    min_height: int
    max_long: int  # longest side, pixels
    max_short: int  # shortest side, pixels
    needs: str | None = None  # an NvdecCaps flag the GPU must have
    reason: str = ""


# NVDEC's documented minimums are 48x16 (H.264, VP8, MPEG-4), 128x128 (VP9, AV1) and
# 144x144 (HEVC); users report hardware resets below ~130 px on the codecs
# documented at 48x16 (NVIDIA/VideoProcessingFramework#421). A video that small
# costs next to nothing on the CPU, so every codec uses the largest minimum.
MIN_SIDE = 144

NVDEC_RULES: dict[str, CodecRule] = {
    r.codec: r
    for r in [
        CodecRule(
            "h264", frozenset({"420"}), frozenset({8}),
            frozenset({"Baseline", "Constrained Baseline", "Main", "High", "Progressive High",
                       "Constrained High"}),
            MIN_SIDE, MIN_SIDE, 4096, 2304,
            reason="NVDEC decodes H.264 Baseline/Main/High, 8-bit 4:2:0 only: no High 10, "
                   "4:2:2 or 4:4:4 before Blackwell (DALI#2197 shows 4:4:4 rejected). "
                   "Up to 4096x4096 (65536 macroblocks) before Blackwell; capped at "
                   "4096x2304 (either orientation) to stay inside the per-level limits",
        ),
        CodecRule(
            "hevc", frozenset({"420"}), frozenset({8, 10}), frozenset({"Main", "Main 10"}),
            MIN_SIDE, MIN_SIDE, 8192, 8192,
            reason="NVDEC decodes HEVC Main and Main 10 (4:2:0, 8/10-bit) up to 8192x8192 on "
                   "Volta and newer. 4:4:4 needs Turing or newer and is not supported on some "
                   "(DALI#6079: Ada); 4:2:2 needs Blackwell; 12-bit (Rext) is rare: all CPU",
        ),
        CodecRule(
            "vp8", frozenset({"420"}), frozenset({8}), None, MIN_SIDE, MIN_SIDE, 4096, 4096,
            reason="VP8 is always 8-bit 4:2:0; NVDEC decodes it up to 4096x4096 on 2nd-gen "
                   "Maxwell and newer",
        ),
        CodecRule(
            "vp9", frozenset({"420"}), frozenset({8, 10}), frozenset({"Profile 0", "Profile 2"}),
            MIN_SIDE, MIN_SIDE, 8192, 8192,
            reason="NVDEC decodes VP9 profile 0 (8-bit 4:2:0) and profile 2 (10-bit 4:2:0) up "
                   "to 8192x8192; profiles 1 and 3 (4:2:2, 4:4:4, RGB) are not supported",
        ),
        CodecRule(
            "av1", frozenset({"420"}), frozenset({8, 10}), frozenset({"Main"}),
            MIN_SIDE, MIN_SIDE, 8192, 8192, needs="av1",
            reason="NVDEC decodes AV1 Main profile (8/10-bit 4:2:0) up to 8192x8192 on "
                   "Ampere GA10x, Ada and Blackwell only: not on T4, A100 or H100/H200",
        ),
    ]
}

# Codecs NVDEC could take that go to the CPU on purpose, with the reason.
CPU_ON_PURPOSE: dict[str, str] = {
    "mpeg4": "MPEG-4 part 2 (DivX/Xvid, often in AVI with packed B-frames): NVDEC stops at "
             "2032x2032 and decodes it sequentially from frame 0 through DALI; the CPU "
             "decoder seeks and handles the container quirks",
    "mjpeg": "MJPEG frames are all keyframes: the CPU decoder jumps straight to each sampled "
             "frame (22 ms for 8 frames of a 10 s 640x360 clip), while DALI decodes every "
             "frame up to the last one asked for (96 ms on CPU)",
}

# DALI 2.4 decodes every frame from the start up to the last requested index (no seeking
# for in-memory input; measured on its CPU backend, the same code path on the GPU). NVDEC
# runs at hundreds of 1080p frames per second per engine, so a long video with 8 frames
# spread over it costs seconds of decoder time that the CPU decoder's seeking avoids.
# 900 frames = 30 s at 30 fps: a first guess, to be calibrated on a GPU (docs/gpu.md).
MAX_GPU_DECODE_FRAMES = 900

# What DALI's CPU backend decodes (its docstring and our tests): the CPU-device test path.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})


def route(
    probe: VideoProbe,
    *,
    backend: Backend = "nvdec",
    caps: NvdecCaps = CONSERVATIVE,
    last_index: int | None = None,
    max_decode_frames: int | None = MAX_GPU_DECODE_FRAMES,
) -> Route:
    """"gpu" if DALI on `backend` should decode the video, else "cpu", with the reason.

    `backend="nvdec"`: DALI's mixed backend on a GPU with `caps`.
    `backend="dali-cpu"`: DALI's CPU backend (tests, and machines without a GPU).
    `last_index`: the highest frame index to be decoded (else the whole stream,
    from `probe.num_frames`); above `max_decode_frames` the CPU decoder's
    seeking is cheaper (None: no limit).
    """
    codec = (probe.codec or "").lower()
    if probe.width <= 0 or probe.height <= 0:
        return Route("cpu", f"unknown frame size {probe.width}x{probe.height}")
    if probe.packets is not None and probe.num_frames is not None and \
            probe.packets < probe.num_frames:
        return Route("cpu", f"{probe.packets} packets for {probe.num_frames} frames: cut short? "
                            "DALI would return stale frames, the CPU decoder reports it")
    frames = last_index + 1 if last_index is not None else probe.num_frames
    if max_decode_frames is not None and frames is not None and frames > max_decode_frames:
        return Route("cpu", f"{frames} frames to decode from the start > {max_decode_frames}: "
                            "DALI does not seek, the CPU decoder does")
    if backend == "dali-cpu":
        if codec in DALI_CPU_CODECS:
            return Route("gpu", f"DALI's CPU backend decodes {codec}")
        return Route("cpu", f"DALI's CPU backend decodes only {sorted(DALI_CPU_CODECS)}, "
                            f"not {codec or 'an unknown codec'}")
    if codec in CPU_ON_PURPOSE:
        return Route("cpu", CPU_ON_PURPOSE[codec])
    rule = NVDEC_RULES.get(codec)
    if rule is None:
        return Route("cpu", f"NVDEC through DALI is not used for {codec or 'an unknown codec'}")
    return _check_rule(rule, probe, caps)


def _check_rule(rule: CodecRule, probe: VideoProbe, caps: NvdecCaps) -> Route:
    chroma, depth_from_fmt = pixel_format(probe.pix_fmt)
    depth = probe.bit_depth or depth_from_fmt
    problems = []
    if rule.needs and not getattr(caps, rule.needs):
        problems.append(f"this GPU ({caps.name}) has no {rule.codec} decoder")
    if chroma not in rule.chroma:
        problems.append(f"pixel format {probe.pix_fmt or 'unknown'} "
                        f"(chroma {chroma or '?'}; NVDEC: {'/'.join(sorted(rule.chroma))})")
    if depth not in rule.bit_depths:
        problems.append(f"bit depth {depth or 'unknown'} "
                        f"(NVDEC: {'/'.join(str(d) for d in sorted(rule.bit_depths))})")
    if rule.profiles is not None and probe.profile and probe.profile not in rule.profiles:
        problems.append(f"profile {probe.profile!r}")
    long_side, short_side = max(probe.width, probe.height), min(probe.width, probe.height)
    max_long, max_short = rule.max_long, rule.max_short
    if rule.codec == "h264" and caps.h264_8k:
        max_long = max_short = 8192
    if probe.width < rule.min_width or probe.height < rule.min_height:
        problems.append(f"{probe.width}x{probe.height} is below {rule.min_width}x{rule.min_height}")
    if long_side > max_long or short_side > max_short:
        problems.append(f"{probe.width}x{probe.height} is above {max_long}x{max_short}")
    if problems:
        return Route("cpu", f"{rule.codec}: " + "; ".join(problems))
    return Route("gpu", f"{rule.codec} {probe.pix_fmt} {depth}-bit "
                        f"{probe.width}x{probe.height}: NVDEC ({caps.name})")


def routing_rows() -> list[dict[str, object]]:
    """Every rule of NVDEC_RULES and CPU_ON_PURPOSE as a plain dict (codec, target, limits,
    reason), in a stable order: for docs and logs."""
    rows: list[dict[str, object]] = []
    for rule in NVDEC_RULES.values():
        rows.append({
            "codec": rule.codec, "target": "gpu",
            "chroma": "/".join(sorted(rule.chroma)),
            "bit_depths": "/".join(str(d) for d in sorted(rule.bit_depths)),
            "profiles": "any" if rule.profiles is None else ", ".join(sorted(rule.profiles)),
            "min": f"{rule.min_width}x{rule.min_height}",
            "max": f"{rule.max_long}x{rule.max_short}",
            "needs": rule.needs or "",
            "reason": rule.reason,
        })
    for codec, reason in CPU_ON_PURPOSE.items():
        rows.append({"codec": codec, "target": "cpu", "reason": reason})
    return rows
