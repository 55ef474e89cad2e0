"""The CPU decoder (PyAV): read the container's index, then only the bytes of the frames used.

decord reads a whole video to build its frame index, and more again to seek.
PyAV (FFmpeg underneath) reads through any seekable file object, asking only
for what the demuxer needs: the container's index (an MP4's moov, a
Matroska file's cues) and the packets of the frames it decodes. So a 5-minute
upload sampled at keyframes costs under 1 % of its bytes and one decoded
frame per frame used; a local file or an S3 object (ranged GETs, see
`pipeline.store.s3.RangedReader`) alike.

How a frame is reached: seek to the keyframe at or before it when that costs
less decoding than going on from the frame decoded last, then decode forward.
A keyframe wanted by itself is read as one packet and decoded alone. Frame
indices come from presentation timestamps (constant frame rate) or from
counting frames after a keyframe (variable frame rate MP4); where neither is
exact (variable-rate Matroska, MPEG-TS: no usable index) the video is decoded
from the start, which is exact for every file.

Traps handled (each checked by a test): an MP4 index holds decode
timestamps, so a keyframe is sought at its timestamp shifted to presentation
time; Matroska cues at the end of the file load only at the first seek;
open-GOP streams drop the leading pictures before a keyframe after a seek, so
a frame that is not there is fetched from the previous keyframe.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import numpy as np

from pipeline.contract import ErrorKind
from pipeline.decoders import DecodedClip, DecodeError, Decoder, Sampler, VideoIndex, VideoMeta
from pipeline.decoders.ffmpeg_messages import FFmpegLog, gist, is_truncation

BUFFER = 64 * 1024  # bytes PyAV asks of a file object at a time


@dataclass(frozen=True)
class Probe:
    """What the container says, read from its header and index only."""

    codec: str
    profile: str | None
    pix_fmt: str | None
    bit_depth: int | None
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float
    keyframes: tuple[int, ...] | None  # frame indices; None when the index does not say


@dataclass(frozen=True)
class _Key:
    index: int  # frame index
    seek_ts: int  # the timestamp (stream time base) that lands the demuxer on it


class _NotConstantRate(Exception):
    """Decoding found a Matroska file's timestamps off its declared frame grid."""


class _Video:
    """One opened video: its probe, its keyframes, and a cursor that decodes forward."""

    def __init__(self, source: str | BinaryIO, size: int | None, max_pixels: int | None = None):
        import av

        self.av = av
        self._it = None  # frames after the last seek
        self.pos: int | None = None  # index of the last frame that came out
        self._counted = -1  # index of the last frame counted since the last seek
        self._target: int | None = None  # the frame being decoded towards (None: every frame)
        self.decoded = 0  # frames decoded so far (the accounting)
        try:
            # a plain OSError from the file object is the store's failure and passes through
            options = {} if isinstance(source, str) else {"buffer_size": BUFFER}
            self.container = av.open(source, "r", **options)
        except av.FFmpegError as e:
            raise _decode_error(e, "cannot open as video") from None
        if not self.container.streams.video:
            self.close()
            raise DecodeError(ErrorKind.NO_VIDEO_STREAM,
                              "no video stream in the file (audio only?)")
        self.stream = stream = self.container.streams.video[0]
        # one decoding thread: a decode task has one CPU, and parallelism comes from tasks
        stream.codec_context.thread_count = 1
        cc = stream.codec_context
        self.size = size
        self.width, self.height = cc.width, cc.height
        if max_pixels is not None and self.width * self.height > max_pixels:
            # refused from the header, before a single frame is decoded
            self.close()
            raise DecodeError(ErrorKind.TOO_LARGE,
                              f"frames of {self.width}x{self.height} are over the limit of "
                              f"{max_pixels:,} pixels (--max-frame-pixels)")
        self.tb = stream.time_base or Fraction(1, 1000)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.start = stream.start_time or 0
        self._index()
        self.codec, self.profile = cc.name, stream.profile
        self.pix_fmt = cc.pix_fmt

    # ------------------------------------------------------------------ the index
    def _index(self) -> None:
        """Frame count, keyframes and how to reach them, from the demuxer's own index."""
        stream = self.stream
        entries = [e for e in stream.index_entries if not e.is_discard]
        if stream.frames and len(entries) == stream.frames:
            # MP4/MOV: one entry per frame, in decode order, timestamps are decode times
            self.kind = "mp4"
            self.num_frames = len(entries)
            end = max(e.pos + e.size for e in entries)
            if self.size is not None and end > self.size:  # cut off before its last frame
                self.close()
                raise DecodeError(ErrorKind.TRUNCATED,
                                  f"the file ends at byte {self.size} but its index places "
                                  f"frames up to byte {end} (a cut-off upload)")
            shift = self.start - entries[0].timestamp
            self.keys = [_Key(i, e.timestamp + shift) for i, e in enumerate(entries)
                         if e.is_keyframe]
            deltas = {b.timestamp - a.timestamp for a, b in itertools.pairwise(entries)}
            self.cfr = len(deltas) <= 1
            return
        # Matroska/WebM: cue points (keyframes, presentation times) and a declared duration.
        # Nothing in them proves a constant frame rate, so they are trusted only when at
        # least two cues sit exactly on the nominal frame grid; decoding then checks that
        # frames come one index apart (see `_next`).
        frames = stream.frames or self._frames_from_duration()
        if frames and self.fps > 0:
            with contextlib.suppress(Exception):  # cues at the end load on the first seek
                self.container.seek(self.start, stream=stream, backward=True)
            entries = [e for e in stream.index_entries if e.is_keyframe]
            if len(entries) >= 2 and all(self._on_grid(e.timestamp) for e in entries):
                self.kind, self.cfr, self.num_frames = "cues", True, frames
                self.keys = [_Key(self._index_of(e.timestamp), e.timestamp) for e in entries]
                return
        # no index we can trust (MPEG-TS, variable frame rate Matroska): count by decoding
        self.kind, self.keys, self.cfr = "none", [], False
        self.num_frames = self._count_frames()

    def _on_grid(self, pts: int) -> bool:
        at = float((pts - self.start) * self.tb) * self.fps
        return abs(at - round(at)) < 0.01

    def _frames_from_duration(self) -> int:
        tag = (self.stream.metadata or {}).get("DURATION")
        seconds = None
        if tag:  # Matroska: the track's end time, "HH:MM:SS.nnnnnnnnn"
            with contextlib.suppress(ValueError):
                h, m, s = tag.split(":")
                seconds = int(h) * 3600 + int(m) * 60 + float(s) - float(self.start * self.tb)
        elif self.stream.duration:
            seconds = float(self.stream.duration * self.tb)
        return round(seconds * self.fps) if seconds and self.fps else 0

    def _count_frames(self) -> int:
        self._target = None
        self.container.seek(0)
        n = sum(1 for _ in self._decode_all())
        self.decoded += n
        self._reset()
        return n

    def _index_of(self, pts: int) -> int:
        return round(float((pts - self.start) * self.tb) * self.fps)

    def index(self) -> VideoIndex:
        keys = tuple(k.index for k in self.keys) if self.kind != "none" else None
        return VideoIndex(self.num_frames, keys)

    def probe(self) -> Probe:
        bits = None
        if self.pix_fmt:
            with contextlib.suppress(Exception):
                bits = self.av.VideoFormat(self.pix_fmt).components[0].bits
        index = self.index()
        return Probe(self.codec, self.profile, self.pix_fmt, bits, self.width, self.height,
                     self.fps, self.num_frames, self.duration_s(), index.keyframes)

    def rescan(self) -> None:
        """Forget the index: count the frames by decoding (exact for any file)."""
        self.kind, self.keys, self.cfr = "none", [], False
        self.num_frames = self._count_frames()

    def duration_s(self) -> float:
        """The end of the last frame: the container's duration when it has one (right for a
        variable frame rate), else frames / rate."""
        tag = (self.stream.metadata or {}).get("DURATION")
        with contextlib.suppress(ValueError, TypeError):
            if tag:
                h, m, sec = tag.split(":")
                return round(int(h) * 3600 + int(m) * 60 + float(sec)
                             - float(self.start * self.tb), 6)
            if self.stream.duration:
                return round(float(self.stream.duration * self.tb), 6)
        return self.num_frames / self.fps if self.fps else 0.0

    # ------------------------------------------------------------------ decoding
    def _decode_all(self):
        """Frames from the current position, packet by packet.

        On the way to a target, frames no other frame refers to (most B-frames) are not
        decoded at all (`skip_frame`): only where a frame's index follows from its
        timestamp (a constant-rate MP4), since a skipped frame cannot be counted.
        """
        cc = self.stream.codec_context
        skipping = self.kind == "mp4" and self.cfr
        try:
            # a plain OSError from the file object (the store) passes through as it is
            for packet in self.container.demux(self.stream):
                if skipping:
                    needed = (self._target is None or packet.pts is None
                              or self._index_of(packet.pts) >= self._target)
                    cc.skip_frame = "DEFAULT" if needed else "NONREF"
                yield from cc.decode(packet)
        except self.av.FFmpegError as e:
            raise _decode_error(e, "cannot decode frames") from None
        finally:
            if skipping:
                cc.skip_frame = "DEFAULT"

    def _reset(self) -> None:
        self._it, self.pos, self._counted = None, None, -1

    def _seek(self, key: _Key | None) -> None:
        """Position the decoder just before `key` (the start without one)."""
        if key is None:
            self.container.seek(0)
        else:
            self.container.seek(key.seek_ts, stream=self.stream, backward=True,
                                any_frame=False)
        self._it = self._decode_all()
        self.pos = None
        self._counted = key.index - 1 if key is not None else -1  # for counting indices

    def _next(self):
        """The next decoded frame and its index, or (None, None) at the end."""
        frame = next(self._it, None)
        if frame is None:
            return None, None
        self.decoded += 1
        if self.cfr and frame.pts is not None:
            idx = self._index_of(frame.pts)
            if self.kind == "cues" and self._counted >= 0 and idx != self._counted + 1:
                raise _NotConstantRate  # frames not one index apart: not the rate declared
        else:
            idx = self._counted + 1
        self._counted = idx
        return frame, idx

    def _key_before(self, target: int) -> _Key | None:
        i = bisect.bisect_right([k.index for k in self.keys], target) - 1
        return self.keys[i] if i >= 0 else None

    def _single(self, key: _Key) -> tuple[int, np.ndarray] | None:
        """A keyframe by itself: one packet read, one frame decoded (no reordering wait);
        its true index and RGB frame, or None when it cannot be used alone."""
        self.container.seek(key.seek_ts, stream=self.stream, backward=True, any_frame=False)
        cc = self.stream.codec_context
        try:
            for packet in self.container.demux(self.stream):
                if packet.size:
                    frames = list(cc.decode(packet)) + list(cc.decode(None))
                    break
            else:
                frames = []
        except self.av.FFmpegError as e:
            raise _decode_error(e, "cannot decode frames") from None
        finally:
            cc.flush_buffers()
        self.decoded += 1
        self._reset()
        frame = frames[0] if frames else None
        # a "keyframe" the decoder does not treat as one (intra refresh) is not usable alone,
        # nor one whose index we cannot tell from its timestamp (variable frame rate)
        if frame is None or not frame.key_frame or not self.cfr or frame.pts is None:
            return None
        index = self._index_of(frame.pts)
        if not 0 <= index < self.num_frames:
            return None
        return index, frame.to_ndarray(format="rgb24")

    def read(self, targets: list[int]) -> dict[int, tuple[int, np.ndarray]]:
        """For each target (sorted, distinct): the index of the frame decoded for it and the
        RGB frame, reading and decoding as little as possible.

        A target that is a keyframe in the index is decoded alone, and reported at its
        true index from its timestamp: in an open GOP, an MP4 index (decode order) puts a
        keyframe a few frames before where it is shown. Every other target is exact.
        """
        out: dict[int, tuple[int, np.ndarray]] = {}
        seekable = self.kind != "none"
        for t in targets:
            key = self._key_before(t) if seekable else None
            if seekable and key is not None and key.index == t and (
                    self.pos is None or t - self.pos > 1):
                found = self._single(key)
                if found is not None:
                    out[t] = found
                    continue
            going_on = self._it is not None and self.pos is not None and self.pos < t
            cost_on = t - self.pos if going_on else None
            cost_seek = t - key.index + 1 if key is not None else t + 1
            if not going_on or (seekable and cost_seek < cost_on):
                out[t] = (t, self._from(key if seekable else None, t))
            else:
                out[t] = (t, self._forward(t))
        return out

    def _from(self, key: _Key | None, target: int) -> np.ndarray:
        """Seek to `key`, decode forward to `target`; an open GOP's missing leading frames
        are fetched from the keyframe before."""
        while True:
            self._seek(key)
            self._target = target
            frame, idx = self._next()
            if key is not None and (frame is None or not frame.key_frame):
                # the index named a keyframe that is not one (an MP4 without its sync-sample
                # box calls every frame a keyframe): what follows may be missing or wrong, so
                # stop trusting the index and decode from the start, exactly
                self.kind, self.keys, key = "none", [], None
                continue
            if frame is None:
                raise self._truncated()
            if idx <= target or key is None:
                return self._forward(target, first=(frame, idx))
            key = self._key_before(key.index - 1)  # open GOP: start one keyframe earlier

    def _forward(self, target: int, first=None) -> np.ndarray:
        self._target = target
        frame, idx = first if first is not None else self._next()
        while frame is not None:
            self.pos = idx
            if idx == target:
                return frame.to_ndarray(format="rgb24")
            if idx > target:  # timestamps skipped it: decode from the start, exactly
                self.kind, self.keys = "none", []
                return self._from(None, target)
            frame, idx = self._next()
        raise self._truncated()

    def _truncated(self) -> DecodeError:
        where = self.pos + 1 if self.pos is not None else 0
        return DecodeError(ErrorKind.TRUNCATED,
                           f"the stream ends at frame {where} (the index says "
                           f"{self.num_frames} frames)")

    def close(self) -> None:
        self.container.close()


# the FFmpeg log of the decode in progress (one decode per process at a time)
_LOG: FFmpegLog | None = None


def _decode_error(e: Exception, what: str) -> DecodeError:
    """A DecodeError for an FFmpeg failure, in FFmpeg's own words (its log, else the error)."""
    if isinstance(e, MemoryError):  # FFmpeg's ENOMEM: the decoder's memory cap, not the video
        return DecodeError(ErrorKind.RESOURCE_LIMIT, f"{what}: out of memory (the cap)")
    lines = _LOG.lines if _LOG is not None else []
    fallback = str(getattr(e, "strerror", None) or e)
    kind = ErrorKind.TRUNCATED if is_truncation(lines) else ErrorKind.CORRUPT
    return DecodeError(kind, f"{what}: {gist(list(lines), fallback)}")


def _size(source: str | BinaryIO) -> int | None:
    try:
        if isinstance(source, str):
            return os.path.getsize(source)
        pos = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(pos)
        return end - pos
    except (OSError, AttributeError, ValueError):
        return None


def _open(source: str | BinaryIO, max_pixels: int | None = None) -> _Video:
    size = _size(source)
    if size == 0:
        raise DecodeError(ErrorKind.EMPTY, "the file is empty")
    return _Video(source, size, max_pixels)


def probe(source: str | BinaryIO, max_pixels: int | None = None) -> Probe:
    """Codec, size, frame count, keyframes: the container's header and index only (kind
    `too_large` for frames over `max_pixels`, as `decode` would say)."""
    global _LOG
    with FFmpegLog() as _LOG:
        video = _open(source, max_pixels)
        try:
            return video.probe()
        finally:
            video.close()


def count_packets(source: str | BinaryIO) -> int:
    """Video packets holding data, by demuxing the whole file (nothing is decoded): fewer
    than the container's frame count means the file was cut short."""
    import av

    global _LOG
    with FFmpegLog() as _LOG:
        try:
            with av.open(source, "r") as container:
                stream = container.streams.video[0]
                return sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as e:
            raise _decode_error(e, "cannot read packets") from None


class PyAVDecoder(Decoder):
    """CPU decoding that reads only what it decodes (see the module doc)."""

    name = "cpu"

    def decode(self, source: str | BinaryIO, sampler: Sampler, *,
               max_pixels: int | None = None) -> DecodedClip:
        global _LOG
        with FFmpegLog() as _LOG:
            return self._decode(source, sampler, max_pixels)

    def _decode(self, source: str | BinaryIO, sampler: Sampler,
                max_pixels: int | None) -> DecodedClip:
        video = _open(source, max_pixels)
        try:
            if video.num_frames < 1:
                raise DecodeError(ErrorKind.ZERO_FRAMES, "the video stream has no frames")
            try:
                wanted = np.asarray(sampler(video.index()), dtype=np.int32).tolist()
                got = video.read(sorted(set(wanted)))
            except _NotConstantRate:  # a Matroska file off its declared rate: count frames
                video.rescan()
                wanted = np.asarray(sampler(video.index()), dtype=np.int32).tolist()
                got = video.read(sorted(set(wanted)))
            # clip order is time order: a keyframe found at another index than the index
            # claimed (an open GOP) keeps its true index and its place in time
            picked = sorted((got[w] for w in wanted), key=lambda pair: pair[0])
            indices = np.asarray([index for index, _ in picked], dtype=np.int32)
            clip = np.stack([frame for _, frame in picked])
            meta = VideoMeta(num_frames=video.num_frames, fps=video.fps,
                             duration_s=video.duration_s(), width=int(clip.shape[2]),
                             height=int(clip.shape[1]))
            return DecodedClip(clip, indices, meta, video.decoded)
        finally:
            video.close()
