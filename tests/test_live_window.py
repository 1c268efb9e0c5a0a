"""live's window (tkinter) on a virtual display: frames are drawn on screen with the overlay, and
the keys work (p next prompt, s snapshot, space pause, q quit). Skipped where Xvfb or tkinter is missing."""

import gc
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from lcmvideo import live

pytest.importorskip("tkinter", reason="tkinter is not installed")
pytestmark = pytest.mark.skipif(not shutil.which("Xvfb"), reason="Xvfb is not installed (apt install xvfb)")


@pytest.fixture
def display(monkeypatch):
    """A fresh Xvfb (black root, no TCP); DISPLAY points at it for the test."""
    r, w = os.pipe()
    p = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-nolisten", "tcp", "-br", "-screen", "0", "640x480x24"],
                         pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            number = f.readline().strip()  # written once the server is ready
        assert number, "Xvfb did not start"
        monkeypatch.setenv("DISPLAY", f":{number}")
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        yield f":{number}"
    finally:
        p.terminate()
        p.wait(timeout=10)


class Inverting:
    """A fast fake model: the frame inverted (the dark synthetic picture turns light grey)."""

    def __init__(self):
        self.steps, self.seed, self.encodes, self.prompts = 2, 0, 0, []

    def __call__(self, image, prompt, strength, controls=()):
        self.prompts.append(prompt)
        time.sleep(0.01)
        return type("F", (), {"image": 255 - image})()


def drive(loop, display):
    """Run the loop, pressing keys and taking a screenshot on Tk's timer; (summary, what was seen)."""
    from PIL import ImageGrab

    root, seen = loop.window.root, {}

    def key(name):
        root.focus_force()
        root.event_generate("<KeyPress>", keysym=name)

    def grab():
        seen["shot"] = np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))

    def paused(when):
        seen[when] = (loop.summary.frames_out, loop.summary.dropped)

    for ms, fn in [(600, grab), (700, lambda: key("p")), (900, lambda: key("s")), (1100, lambda: key("space")),
                   (1200, lambda: paused("start")), (1700, lambda: paused("end")), (1750, lambda: key("space")),
                   (2200, lambda: key("q"))]:
        root.after(ms, fn)
    return loop.run(), seen


def test_window_shows_frames_and_keys_work(display, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sty, said = Inverting(), []
    loop = live.Loop(sty, live.Synthetic(fps=60, size=64), live.Options(prompts=["a red circle", "a blue square"],
                                                                        duration=60), say=said.append)
    assert loop.window is not None, said  # a window, not the headless fallback
    assert loop.opts.out is None
    s, seen = drive(loop, display)
    del loop
    gc.collect()  # Tk must be freed on this thread: it aborts the process if another one frees it
    assert s.seconds < 30  # q ended it
    shot = seen["shot"]
    light = np.all(np.abs(shot.astype(int) - 235) <= 6, axis=-1)  # the inverted background, scaled up on screen
    assert light.sum() > 100 * 100
    assert (shot[:12, :200] == 0).all(axis=-1).mean() > 0.3 and (shot[:12, :200] > 200).any()  # the overlay's text band
    assert "a red circle" in sty.prompts and sty.prompts[-1] == "a blue square"  # p
    assert list(tmp_path.glob("live-*.png")) and any(m.startswith("snapshot") for m in said)  # s
    assert "paused" in said and "resumed" in said
    (out0, drop0), (out1, drop1) = seen["start"], seen["end"]
    assert out1 == out0 and drop1 > drop0 + 5  # space: no output while paused, the camera's frames dropped
    assert s.frames_in == s.frames_out + s.dropped + s.skipped + s.rejected
    assert s.recording is None  # with a window, nothing is recorded unless asked


def test_no_tkinter_display_falls_back_to_recording(display, tmp_path, monkeypatch):
    """A display but no usable Tk (here: an unreachable display): one line, and the recording."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISPLAY", ":9999")
    said = []
    s = live.run(Inverting(), live.Synthetic(fps=0, size=64, frames=5), live.Options(prompts=["x"]), say=said.append)
    assert any(m.startswith("no window") for m in said), said
    assert s.recording is not None and s.recording.name == "live.mp4"
