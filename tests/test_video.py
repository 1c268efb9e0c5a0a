import errno
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from lcmvideo.errors import LcmvideoError
from lcmvideo.output import video

META = {"settings": {"fps": 7.5, "prompt": "a red circle → a blue square"}, "seed": 7}


def synthetic(t=12, h=48, w=64):
    """Smooth gradients plus a moving square: distinct frames that H.264 keeps well."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = x * 255 // max(w - 1, 1)
        frames[i, ..., 1] = y * 255 // max(h - 1, 1)
        frames[i, ..., 2] = 20 * i
        frames[i, 8:24, 4 * i:4 * i + 16] = (255, 255, 0)
    return frames


def flat(colors, h=10, w=12):
    """One flat frame per colour: few colours, so GIF stores them losslessly."""
    return np.stack([np.full((h, w, 3), c, np.uint8) for c in colors])


def snapshot(path: Path):
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


# --- MP4 ---------------------------------------------------------------------------------

def test_mp4_round_trip(tmp_path):
    frames = synthetic()
    out = video.write(frames, tmp_path / "clip.mp4", 7.5, metadata=META)
    assert out == tmp_path / "clip.mp4"
    got, fps = video.read(out)
    assert got.shape == (12, 48, 64, 3) and got.dtype == np.uint8
    assert fps == pytest.approx(7.5, abs=1e-3)
    err = np.abs(got.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 8
    # frames come back in order: each is closer to its own input than to its neighbour
    shifted = np.abs(got[1:].astype(int) - frames[:-1].astype(int)).mean(axis=(1, 2, 3))
    assert (err[1:] < shifted).all()
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert json.loads(c.metadata["comment"]) == META
    assert video.read_metadata(out) == META
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart


def test_mp4_keeps_size_and_exact_fps(tmp_path):
    frames = synthetic(5, 40, 72)  # not multiples of 16: imageio-ffmpeg's default would rescale to 80x48
    got, fps = video.read(video.write(frames, tmp_path / "a.mp4", 24000 / 1001))
    assert got.shape == (5, 40, 72, 3)
    assert fps == pytest.approx(24000 / 1001, abs=1e-6)
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 8
    assert video.read_metadata(tmp_path / "a.mp4") is None


def test_mp4_odd_size_is_padded_not_scaled(tmp_path):
    frames = synthetic(3, 33, 47)
    got, _ = video.read(video.write(frames, tmp_path / "odd.mp4", 8))
    assert got.shape == (3, 34, 48, 3)
    assert np.abs(got[:, :33, :47].astype(int) - frames.astype(int)).mean() < 8
    # the pad repeats the last row/column
    assert np.abs(got[:, 33].astype(int) - got[:, 32].astype(int)).mean() < 8


def test_mp4_ffmpeg_failure_is_a_runtime_error(tmp_path, monkeypatch):
    import imageio_ffmpeg._io

    monkeypatch.setattr(imageio_ffmpeg._io, "get_ffmpeg_exe", lambda: "/bin/false")
    with pytest.raises(LcmvideoError) as e:
        video.write(synthetic(4, 16, 16), tmp_path / "x.mp4", 8, metadata=META)
    assert e.value.exit_code == 1
    assert f"{tmp_path / 'x.mp4'}: could not write video:" in e.value.message
    assert os.listdir(tmp_path) == []


# --- GIF ---------------------------------------------------------------------------------

def test_gif_keeps_identical_frames_loops_and_comment(tmp_path):
    colors = [(255, 0, 0)] * 2 + [(0, 255, 0)] * 3 + [(0, 0, 255)]
    frames = flat(colors)
    out = video.write(frames, tmp_path / "a.gif", 10, metadata=META)
    with Image.open(out) as im:
        assert im.n_frames == 6
        assert im.info["loop"] == 0
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert durations == [100] * 6
    got, fps = video.read(out)
    assert np.array_equal(got, frames)
    assert fps == pytest.approx(10)
    assert video.read_metadata(out) == META


def test_gif_durations_round_to_centiseconds_keeping_the_total(tmp_path):
    out = video.write(flat([(i * 30, 0, 0) for i in range(8)]), tmp_path / "a.gif", 8)
    with Image.open(out) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    # 125 ms is not a whole number of centiseconds: alternate 130/120 so 8 frames last exactly 1 s
    assert durations == [130, 120] * 4
    assert video.read(out)[1] == pytest.approx(8.0)
    assert video.read_metadata(out) is None


# --- PNG folder --------------------------------------------------------------------------

def test_png_folder_names_text_chunk_and_sidecar(tmp_path):
    frames = synthetic(11, 20, 30)
    out = video.write(frames, tmp_path / "frames", 7.5, metadata=META)
    assert out.is_dir()
    assert sorted(os.listdir(out)) == [f"{i:04d}.png" for i in range(11)]
    for p in (out / "0000.png", out / "0010.png"):
        with Image.open(p) as im:
            assert json.loads(im.text["lcmvideo"]) == META
        assert b"tEXtlcmvideo\x00" in p.read_bytes()
    assert json.loads((tmp_path / "frames.json").read_text()) == META
    got, fps = video.read(out)
    assert np.array_equal(got, frames)
    assert fps == 7.5  # from the sidecar's settings.fps
    assert video.read_metadata(out) == META


def test_png_folder_fps_sources(tmp_path):
    frames = synthetic(2, 8, 8)
    video.write(frames, tmp_path / "a", 5)
    assert video.read(tmp_path / "a")[1] == 8.0  # no sidecar: the default
    video.write(frames, tmp_path / "b", 5, metadata={"fps": 12.5})
    assert video.read(tmp_path / "b")[1] == 12.5


def test_png_frame_names_grow_past_9999():
    assert video._frame_names(3) == ["0000.png", "0001.png", "0002.png"]
    names = video._frame_names(10001)
    assert names[0] == "00000.png" and names[-1] == "10000.png" and names == sorted(names)


def test_png_folder_is_replaced_whole(tmp_path):
    video.write(synthetic(5, 8, 8), tmp_path / "f", 8)
    video.write(synthetic(3, 8, 8), tmp_path / "f", 8)
    assert sorted(os.listdir(tmp_path / "f")) == ["0000.png", "0001.png", "0002.png"]
    assert os.listdir(tmp_path) == ["f"]


# --- sidecar -----------------------------------------------------------------------------

def test_sidecar_naming():
    assert video.sidecar_path(Path("out/clip.mp4")) == Path("out/clip.mp4.json")
    assert video.sidecar_path(Path("out/a.gif")) == Path("out/a.gif.json")
    assert video.sidecar_path(Path("out/frames")) == Path("out/frames.json")
    assert video.sidecar_path(Path("out/frames/")) == Path("out/frames.json")


def test_sidecar_content(tmp_path):
    meta = {"output": {"fps": 8, "path": tmp_path / "x"}, "n": np.int64(3), "prompt": "café"}
    out = video.write(synthetic(2, 8, 8), tmp_path / "a.gif", 8, metadata=meta)
    text = video.sidecar_path(out).read_text(encoding="utf-8")
    assert text.startswith('{\n  "output"') and "café" in text  # pretty, readable
    assert json.loads(text) == {"output": {"fps": 8, "path": str(tmp_path / "x")}, "n": 3, "prompt": "café"}
    video.write(synthetic(2, 8, 8), tmp_path / "b.gif", 8)
    assert not video.sidecar_path(tmp_path / "b.gif").exists()


# --- atomicity ---------------------------------------------------------------------------

def fail_after(monkeypatch, fmt, exc, n=3):
    """Make the frame encoder of `fmt` raise `exc` once `n` frames went through; return the call log."""
    import imageio_ffmpeg
    from PIL import GifImagePlugin

    calls = []
    if fmt == "mp4":
        real = imageio_ffmpeg.write_frames

        class Failing:
            def __init__(self, *a, **k):
                self.gen = real(*a, **k)

            def send(self, frame):
                if frame is not None:
                    if len(calls) == n:
                        raise exc
                    calls.append(1)
                return self.gen.send(frame)

            def close(self):
                self.gen.close()

        monkeypatch.setattr(imageio_ffmpeg, "write_frames", Failing)
        return calls
    owner, name = (GifImagePlugin, "getdata") if fmt == "gif" else (Image.Image, "save")
    real = getattr(owner, name)

    def failing(*a, **k):
        if len(calls) == n:
            calls.append(a[1] if fmt == "png" else None)  # Image.save(self, fp): the frame's path
            raise exc
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, failing)
    return calls


TARGETS = {"mp4": "clip.mp4", "gif": "clip.gif", "png": "frames"}


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
@pytest.mark.parametrize("previous", [False, True])
def test_failed_write_leaves_nothing_and_keeps_previous(tmp_path, monkeypatch, fmt, exc, previous):
    out = tmp_path / TARGETS[fmt]
    if previous:
        video.write(synthetic(4, 16, 16), out, 8, metadata={"old": True})
    before = {p.name: snapshot(p) for p in tmp_path.iterdir()}
    calls = fail_after(monkeypatch, fmt, exc)
    with pytest.raises(type(exc) if isinstance(exc, KeyboardInterrupt) else LcmvideoError) as e:
        video.write(synthetic(8, 16, 16), out, 8, metadata=META)
    monkeypatch.undo()
    assert len(calls) >= 3  # it failed mid-way, after some frames were encoded
    if isinstance(exc, OSError):
        assert e.value.exit_code == 1
        assert e.value.message == f"{out}: could not write video: No space left on device"
    after = {p.name: snapshot(p) for p in tmp_path.iterdir()}
    assert after == before  # no temp leftovers, previous output and sidecar byte-identical
    if previous:
        assert video.read_metadata(out) == {"old": True}


def test_png_temp_folder_is_hidden_beside_the_target(tmp_path, monkeypatch):
    calls = fail_after(monkeypatch, "png", OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(LcmvideoError):
        video.write(synthetic(8, 8, 8), tmp_path / "frames", 8)
    # the frames went to a hidden temp folder next to the target, removed after the failure
    frame = calls[-1]
    assert frame.name == "0003.png" and frame.parent.parent == tmp_path
    assert frame.parent.name.startswith(".frames.")
    assert os.listdir(tmp_path) == []


# --- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8),
    np.zeros((2, 8, 8, 4), np.uint8), np.zeros((0, 8, 8, 3), np.uint8), [[0]],
])
def test_write_rejects_bad_frames(tmp_path, bad):
    with pytest.raises(ValueError, match="uint8"):
        video.write(bad, tmp_path / "a.mp4", 8)
    assert os.listdir(tmp_path) == []


def test_format_for(tmp_path):
    assert video.format_for(Path("a.mp4"), None) == "mp4"
    assert video.format_for(Path("a.GIF"), None) == "gif"
    assert video.format_for(Path("frames"), None) == "png"
    assert video.format_for("out.v2/", None) == "png"
    (tmp_path / "d.mp4").mkdir()
    assert video.format_for(tmp_path / "d.mp4", None) == "png"
    assert video.format_for(Path("a.mp4"), "gif") == "gif"


def test_format_for_errors():
    with pytest.raises(LcmvideoError) as e:
        video.format_for(Path("a.mp4"), "avi")
    assert e.value.exit_code == 2
    assert e.value.message == "--format: 'avi' is not one of mp4, gif, png"
    with pytest.raises(LcmvideoError) as e:
        video.format_for(Path("out/clip.avi"), None)
    assert e.value.exit_code == 2
    assert e.value.message.startswith("out/clip.avi: unknown output extension '.avi'")
    assert ".mp4" in e.value.message and ".gif" in e.value.message


def test_check_writable_errors(tmp_path):
    def err(out, fmt=None):
        with pytest.raises(LcmvideoError) as e:
            video.check_writable(out, fmt)
        assert e.value.exit_code == 2 and str(out) in e.value.message
        return e.value.message

    assert "does not exist" in err(tmp_path / "missing" / "a.mp4")
    (tmp_path / "d.mp4").mkdir()
    assert "is a folder" in err(tmp_path / "d.mp4", "mp4")
    (tmp_path / "f").write_text("x")
    assert "is a file" in err(tmp_path / "f", "png")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "notes.txt" in err(tmp_path / "mine")
    with pytest.raises(LcmvideoError):
        video.write(synthetic(2, 8, 8), tmp_path / "mine", 8)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    video.check_writable(tmp_path / "new.mp4")  # fine
    video.check_writable(tmp_path / "new")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(LcmvideoError) as e:
            video.check_writable(ro / "a.mp4")
        assert e.value.exit_code == 2 and "not writable" in e.value.message
    finally:
        ro.chmod(0o755)


def test_read_errors(tmp_path):
    with pytest.raises(LcmvideoError) as e:
        video.read(tmp_path / "nope.mp4")
    assert e.value.exit_code == 2
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(LcmvideoError) as e:
        video.read(tmp_path / "junk.mp4")
    assert e.value.exit_code == 1 and "could not read video" in e.value.message
    assert video.read_metadata(tmp_path / "junk.mp4") is None
