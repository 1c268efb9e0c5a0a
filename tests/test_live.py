"""Live mode: newest frame wins, counting, prompt cache, similarity filter, headless sinks, stops."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from lcmvideo import live
from lcmvideo.cli import cli
from lcmvideo.output import video


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


class FakeFrame:
    def __init__(self, image):
        self.image = image


class SlowStylizer:
    """The Stylizer's call interface; sleeps like a slow model and records what it saw."""

    def __init__(self, delay=0.03):
        self.delay, self.encodes, self.seen, self._known = delay, 0, [], set()

    def __call__(self, image, prompt, strength, controls=()):
        if prompt not in self._known:
            self._known.add(prompt)
            self.encodes += 1
        self.seen.append(prompt)
        time.sleep(self.delay)
        return FakeFrame(255 - image)


def opts(**kw):
    kw.setdefault("prompts", ["a blue circle"])
    kw.setdefault("window", False)
    return live.Options(**kw)


def test_newest_frame_wins_and_nothing_queues():
    src = live.Synthetic(fps=400, size=64, frames=300)
    sty = SlowStylizer(delay=0.03)
    s = live.run(sty, src, opts(), say=lambda m: None)
    assert s.frames_out >= 3 and s.dropped > s.frames_out  # the source outran the model
    for seq, newest in s.processed:
        assert seq == newest  # each inference started on the newest frame there was
    assert s.frames_in == s.frames_out + s.dropped + s.skipped == 300
    seqs = [q for q, _ in s.processed]
    assert seqs == sorted(seqs)


def test_summary_memory_is_bounded_and_counts_stay_whole(monkeypatch):
    monkeypatch.setattr(live, "HISTORY", 20)
    src = live.Synthetic(fps=400, size=16, frames=60)
    s = live.run(SlowStylizer(delay=0.0), src, opts(), say=lambda m: None)
    assert s.frames_out > 20  # more output frames than the history keeps
    assert len(s.latencies_ms) == len(s.processed) == 20
    assert s.processed[-1][0] == max(q for q, _ in s.processed)  # the newest are the ones kept
    assert s.frames_in == s.frames_out + s.dropped + s.skipped == 60
    assert "latency median" in s.line()


def test_slot_holds_one_frame():
    slot = live.Slot()
    for i in range(100):
        slot.put(live.Item(np.zeros((2, 2, 3), np.uint8), i, time.perf_counter()))
    assert slot.dropped == 99 and slot.take().seq == 99 and slot.take(timeout=0.01) is None


def test_similarity_filter_skips_still_frames():
    still = live.run(SlowStylizer(0.0), live.Synthetic(fps=100, size=64, frames=40, still=True),
                     opts(similarity=0.99), say=lambda m: None)
    assert still.skipped >= 30 and still.frames_out >= 1
    moving = live.run(SlowStylizer(0.0), live.Synthetic(fps=100, size=64, frames=40),
                      opts(similarity=0.999), say=lambda m: None)
    assert moving.skipped < still.skipped
    for s in (still, moving):
        assert s.frames_in == s.frames_out + s.dropped + s.skipped


def test_prompt_change_encodes_once(tiny_models):
    from lcmvideo.pipeline import img2img

    sty = img2img.Stylizer(tiny_models, steps=1, seed=0)
    frame = np.zeros((64, 64, 3), np.uint8)
    for p in ["a red circle", "a red circle", "a blue square", "a blue square", "a blue square"]:
        sty(frame, p, 0.5)
    assert sty.encodes == 2


def test_headless_run_records_what_it_produced(tmp_path, tiny_dir):
    src = tmp_path / "in.mp4"
    from lcmvideo.shapes import world

    video.write(world.clip(world.Scene("circle", "red", "black", 12, 32, 8, "moving right", 2.0), 16), src, 8.0)
    out = tmp_path / "rec.mp4"
    r = CliRunner().invoke(cli, ["live", "--source", str(src), "--loop", "-p", "a blue circle", "--max-frames", "5",
                                 "--out", str(out), "--steps", "1"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("frames in"))
    n = [int(x) for x in re.findall(r"(?:in|out|dropped|skipped) (\d+)", line)]
    assert n[0] == n[1] + n[2] + n[3] and n[1] == 5
    frames, _ = video.read(out)
    assert frames.shape == (5, 64, 64, 3)
    assert "no window" in r.output  # headless: said so, recorded instead


def test_canny_controlnet_runs_live_and_control_map_needs_a_net(tmp_path, tiny_dir):
    out = tmp_path / "rec.mp4"
    r = CliRunner().invoke(cli, ["live", "--source", "synthetic", "-p", "a blue circle", "--max-frames", "3",
                                 "--out", str(out), "--steps", "1", "--controlnet", "embedded", "--control-map", "canny"])
    assert r.exit_code == 0, r.output
    assert video.read(out)[0].shape == (3, 64, 64, 3)
    r = CliRunner().invoke(cli, ["live", "--source", "synthetic", "-p", "x", "--control-map", "canny"])
    assert r.exit_code == 2 and "--control-map goes with --controlnet" in r.output


def test_no_display_without_out_records_to_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = live.run(SlowStylizer(0.0), live.Synthetic(fps=0, size=64, frames=6), opts(window=True), say=lambda m: None)
    assert s.recording == tmp_path / "live.mp4" or s.recording.resolve() == (tmp_path / "live.mp4").resolve()
    assert video.read(tmp_path / "live.mp4")[0].shape[0] == s.frames_out


def test_missing_camera_and_bad_sources_fail_fast(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(Exception) as e:
        live.open_source("/dev/video-nope", None)
    assert "no camera" in str(e.value) and "/dev/video-nope" in str(e.value)
    assert time.perf_counter() - t0 < live.CAMERA_TIMEOUT_S + 2
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 100)
    with pytest.raises(Exception, match="not a video"):
        live.open_source(None, str(bad))
    with pytest.raises(Exception, match="no such file"):
        live.open_source(None, str(tmp_path / "none.mp4"))
    r = CliRunner().invoke(cli, ["live", "--camera", "/dev/video-nope", "-p", "x"])
    assert r.exit_code == 1 and "no camera" in r.output and "Traceback" not in r.output


def test_sigint_leaves_a_valid_recording(tmp_path):
    out = tmp_path / "rec.mp4"
    p = subprocess.Popen([sys.executable, "-m", "lcmvideo.cli", "live", "--source", "synthetic", "-p", "a circle",
                          "--steps", "1", "--out", str(out), "--fps", "8"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=os.environ.copy(), text=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not list(tmp_path.glob(".rec.mp4.*")):
            time.sleep(0.2)
        time.sleep(1.0)  # a few frames more
        p.send_signal(signal.SIGINT)
        output, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, output
    assert "frames in" in output
    frames, fps = video.read(out)
    assert len(frames) >= 1 and fps == pytest.approx(8.0)
    assert not list(tmp_path.glob(".rec.mp4.*"))


def test_session_live_api(tmp_path, tiny_dir):
    from lcmvideo import Session

    s = Session().live(live.Synthetic(fps=30, size=64), prompts=["a red circle"], steps=1,
                       max_frames=3, out=tmp_path / "r.mp4", fps=8)
    assert s.frames_out == 3 and video.read(tmp_path / "r.mp4")[0].shape[0] == 3
