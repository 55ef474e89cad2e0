"""The CPU decoder (PyAV): the right frames (checked against ffmpeg's own decode), read
sparingly, and clear errors."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import videos
from conftest import BROKEN, GOOD

from pipeline.decoders import DecodeError, decoder_for
from pipeline.sampling import sampler


def decode_clip(source, num_segments: int, mode: str = "uniform", **sampling):
    """(frames, indices, meta) of the CPU decoder with TSN sampling."""
    clip = decoder_for("cpu").decode(source, sampler(mode, num_segments, **sampling))
    return clip.frames, clip.indices, clip.meta


# mean absolute difference allowed between our RGB and ffmpeg's rgb24 of the same
# frame (both convert YUV with swscale; they agree to within rounding)
SAME_FRAME = 2.0


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("mode", ["uniform", "keyframe"])
@pytest.mark.parametrize("name", GOOD)
def test_decoded_frames_are_the_sampled_frames(video_corpus, name, mode):
    # in keyframe mode too: `indices` (the output's frame_indices) are the truth
    path = video_corpus[name]
    frames, indices, meta = decode_clip(str(path), 4, mode)
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
    # FFmpeg's own log lines were kept out of the console...
    assert err == "" and out == ""
    # ...and the console works again afterwards
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


def test_error_messages_keep_ffmpegs_gist(video_corpus):
    with pytest.raises(DecodeError) as info:
        decode_clip(str(video_corpus["text.mp4"]), 4)
    assert "moov atom not found" in info.value.message
    with pytest.raises(DecodeError) as info:  # found from its index, before any decoding
        decode_clip(str(video_corpus["cut.mp4"]), 4)
    assert "cut-off upload" in info.value.message
    # a corrupt file whose bytes are text: no file content leaks into the message
    with pytest.raises(DecodeError) as info:
        decode_clip(io.BytesIO(video_corpus["text.mp4"].read_bytes()), 4)
    assert "just a text file" not in info.value.message


def test_frame_count_and_an_empty_file_object(video_corpus):
    assert decode_clip(str(video_corpus["vp9"]), 4)[2].num_frames == 40
    with pytest.raises(DecodeError) as info:
        decode_clip(io.BytesIO(b""), 4)
    assert info.value.kind == "empty"


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """10 s at 25 fps, a keyframe every 50 frames, B-frames: an upload's structure."""
    spec = videos.Spec("long", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset",
                                "ultrafast", "-bf", "2", "-keyint_min", "50", "-sc_threshold",
                                "0"), width=640, height=360, frames=250, gop=50)
    return videos.make_video(spec, tmp_path_factory.mktemp("long") / "long")


class Counting(io.RawIOBase):
    """A file that counts the bytes read from it."""

    def __init__(self, path):
        self.f = open(path, "rb")  # noqa: SIM115
        self.read_bytes = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, b):
        n = self.f.readinto(b)
        self.read_bytes += n
        return n


def test_keyframe_sampling_takes_keyframes_and_decodes_little(long_video):
    from pipeline.decoders.pyav import probe

    keys = probe(str(long_video)).keyframes
    assert keys == (0, 50, 100, 150, 200)
    uniform = decoder_for("cpu").decode(str(long_video), sampler("uniform", 8))
    keyframe = decoder_for("cpu").decode(str(long_video), sampler("keyframe", 8))
    # segments of 31.25 frames: a keyframe where a segment has one, else its first frame
    assert keyframe.indices.tolist() == [0, 50, 63, 100, 150, 157, 200, 219]
    assert keyframe.frames_decoded < uniform.frames_decoded / 3
    for frame, k in zip(keyframe.frames, keyframe.indices.tolist(), strict=True):
        assert _mad(frame, videos.reference_frame(long_video, k)) < SAME_FRAME


def test_only_the_bytes_of_decoded_frames_are_read(long_video):
    size = long_video.stat().st_size
    reads = {}
    for mode in ("uniform", "keyframe"):
        src = Counting(long_video)
        decoder_for("cpu").decode(src, sampler(mode, 4))
        reads[mode] = src.read_bytes
    assert reads["keyframe"] < 0.5 * size and reads["keyframe"] < reads["uniform"] <= 1.1 * size


def test_a_storage_failure_while_decoding_is_not_the_videos_fault(long_video):
    class Failing(Counting):
        def readinto(self, b):
            if self.read_bytes > 20_000:
                raise OSError("the store went away")
            return super().readinto(b)

    with pytest.raises(OSError, match="store went away"):
        decoder_for("cpu").decode(Failing(long_video), sampler("uniform", 4))


def test_open_gop_and_variable_rate_are_exact(video_corpus):
    # x265's default HEVC has open GOPs; the mkv's frames are unevenly spaced in time
    for name in ("hevc", "vfr"):
        path = video_corpus[name]
        for mode in ("uniform", "keyframe"):
            frames, indices, _ = decode_clip(str(path), 8, mode)
            assert indices.tolist() == sorted(indices.tolist())
            for frame, k in zip(frames, indices.tolist(), strict=True):
                assert _mad(frame, videos.reference_frame(path, k)) < SAME_FRAME, (name, mode, k)


def test_an_index_that_calls_every_frame_a_keyframe_gives_no_wrong_frames(long_video,
                                                                          tmp_path):
    """An MP4 without its sync-sample box (stss) says every frame is a keyframe: seeking and
    decoding a "keyframe" alone then start from frames that need others. The decoder notices
    (the frame is not a keyframe, or a later one comes out first) and takes the exact path:
    the frames are those `indices` name, in both samplings."""
    data = long_video.read_bytes()
    assert data.count(b"stss") == 1
    liar = tmp_path / "no_stss.mp4"
    liar.write_bytes(data.replace(b"stss", b"free"))  # the box is now skipped as padding
    for mode in ("uniform", "keyframe"):
        frames, indices, meta = decode_clip(str(liar), 4, mode)
        assert meta.num_frames == 250
        for frame, k in zip(frames, indices.tolist(), strict=True):
            assert _mad(frame, videos.reference_frame(long_video, k)) < SAME_FRAME, (mode, k)


def test_error_messages_never_carry_a_signed_urls_query():
    from pipeline.decoders.ffmpeg_messages import gist

    url = ("https://videos.s3.amazonaws.com/u/1.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAEXAMPLE%2F20261125&X-Amz-Signature=0123abcd")
    msg = gist([], f"Error reading {url}...")
    assert "https://videos.s3.amazonaws.com/u/1.mp4" in msg
    assert "AKIAEXAMPLE" not in msg and "Signature" not in msg
