"""decord decoding: the right frames (checked against ffmpeg's own decode), and clear errors."""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import pytest
import torch  # noqa: F401  (before decord, always: see pipeline/decoders/decord_cpu.py)
import videos
from conftest import BROKEN, GOOD

from pipeline.decoders import DecodeError, decoder_for
from pipeline.sampling import segment_indices


def decode_clip(source, num_segments: int, **sampling):
    """(frames, indices, meta) of the CPU decoder with TSN sampling."""
    sampler = functools.partial(segment_indices, num_segments=num_segments, **sampling)
    clip = decoder_for("cpu").decode(source, sampler)
    return clip.frames, clip.indices, clip.meta

# mean absolute difference allowed between decord's RGB and ffmpeg's rgb24 of
# the same frame (both convert YUV with swscale; they agree to within rounding)
SAME_FRAME = 2.0


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", GOOD)
def test_decoded_frames_are_the_sampled_frames(video_corpus, name):
    path = video_corpus[name]
    frames, indices, meta = decode_clip(str(path), 4)
    assert frames.dtype == np.uint8 and frames.shape[0] == 4 and frames.shape[-1] == 3
    assert indices.dtype == np.int32
    for frame, k in zip(frames, indices.tolist(), strict=True):
        ref = videos.reference_frame(path, k)
        assert frame.shape == ref.shape
        same = _mad(frame, ref)
        assert same < SAME_FRAME, f"{name} frame {k}: differs from ffmpeg's frame by {same:.2f}"
        # testsrc2 changes every frame, so the neighbours must be clearly further away:
        # this catches an off-by-one seek, not just a similar-looking picture
        for j in (k - 1, k + 1):
            if 0 <= j < meta.num_frames:
                other = _mad(frame, videos.reference_frame(path, j))
                assert other > same + 1.0, f"{name}: frame {k} looks like frame {j}"


def test_metadata(video_corpus):
    _, idx, meta = decode_clip(str(video_corpus["h264"]), 8)
    assert (meta.num_frames, meta.fps, meta.width, meta.height) == (40, 25.0, 96, 64)
    assert meta.duration_s == pytest.approx(1.6)
    assert idx.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]

    _, _, odd = decode_clip(str(video_corpus["odd"]), 4)
    assert (odd.width, odd.height) == (317, 239)

    _, _, one = decode_clip(str(video_corpus["one_frame"]), 8)
    assert one.num_frames == 1

    # variable frame rate: 36 frames whose gaps add up to 2.32 s, not 36 / 25
    _, _, vfr = decode_clip(str(video_corpus["vfr"]), 4)
    assert vfr.num_frames == 36
    assert vfr.duration_s == pytest.approx(2.32, abs=0.05)


def test_file_object_gives_the_same_frames_as_the_path(video_corpus):
    path = video_corpus["hevc"]
    by_path, idx_a, _ = decode_clip(str(path), 4)
    by_object, idx_b, _ = decode_clip(io.BytesIO(path.read_bytes()), 4)
    assert idx_a.tolist() == idx_b.tolist()
    assert np.array_equal(by_path, by_object)


def test_training_sampling_uses_the_rng(video_corpus):
    path = str(video_corpus["h264"])
    _, a, _ = decode_clip(path, 4, train=True, rng=np.random.default_rng(1))
    _, b, _ = decode_clip(path, 4, train=True, rng=np.random.default_rng(1))
    assert a.tolist() == b.tolist()
    for k, i in enumerate(a.tolist()):
        assert 10 * k <= i < 10 * (k + 1)


@pytest.mark.parametrize("name, kind", sorted(BROKEN.items()))
def test_broken_inputs_raise_a_kind_and_a_message_without_console_noise(
    video_corpus, capfd, name, kind
):
    capfd.readouterr()
    with pytest.raises(DecodeError) as info:
        decode_clip(str(video_corpus[name]), 4)
    out, err = capfd.readouterr()
    assert info.value.kind == kind
    message = info.value.message
    assert message and message.isprintable() and len(message) <= 400
    assert "unknown decoder error" not in message
    # FFmpeg's and decord's own log lines were kept out of the console...
    assert err == "" and out == ""
    # ...and the console works again afterwards
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


def test_error_messages_keep_ffmpegs_gist(video_corpus):
    with pytest.raises(DecodeError) as info:
        decode_clip(str(video_corpus["text.mp4"]), 4)
    assert "moov atom not found" in info.value.message
    with pytest.raises(DecodeError) as info:
        decode_clip(str(video_corpus["cut.mp4"]), 4)
    assert "partial file" in info.value.message
    # a corrupt file whose bytes are text: no file content leaks into the message
    with pytest.raises(DecodeError) as info:
        decode_clip(io.BytesIO(video_corpus["text.mp4"].read_bytes()), 4)
    assert "just a text file" not in info.value.message


def test_frame_count_and_an_empty_file_object(video_corpus):
    assert decode_clip(str(video_corpus["vp9"]), 4)[2].num_frames == 40
    with pytest.raises(DecodeError) as info:
        decode_clip(io.BytesIO(b""), 4)
    assert info.value.kind == "empty"


def test_long_video_seeks_and_still_gets_the_right_frames(tmp_path):
    import decord

    from pipeline.decoders.decord_cpu import seek_cost

    spec = videos.Spec("long", videos.SPECS["h264"].codec_args, frames=250)
    path = videos.make_video(spec, tmp_path / "long")
    targets = segment_indices(250, 4).tolist()
    keys = decord.VideoReader(str(path), num_threads=1).get_key_indices()
    assert targets[-1] + 1 > 2 * seek_cost(keys, targets)  # this video takes the seek path
    frames, indices, _ = decode_clip(str(path), 4)
    for frame, k in zip(frames, indices.tolist(), strict=True):
        assert _mad(frame, videos.reference_frame(path, k)) < SAME_FRAME


def test_error_messages_never_carry_a_signed_urls_query():
    from pipeline.decoders.ffmpeg_messages import gist

    url = ("https://videos.s3.amazonaws.com/u/1.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAEXAMPLE%2F20261125&X-Amz-Signature=0123abcd")
    msg = gist("", f"Error reading {url}...")
    assert "https://videos.s3.amazonaws.com/u/1.mp4" in msg
    assert "AKIAEXAMPLE" not in msg and "Signature" not in msg
