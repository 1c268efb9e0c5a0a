"""Live: a camera, a video file or a synthetic source stylized in real time; the newest frame wins.

Three threads, no backlog:
  capture  reads the source and puts each frame into a one-frame slot, replacing one that
           inference has not taken yet (that frame counts as dropped);
  main     takes the newest frame, optionally skips it when it barely changed (similarity
           filter), stylizes it (img2img.Stylizer: prompts encoded once, the same noise each
           frame), shows it in a window when there is a display;
  sink     writes outputs to the recording (MP4, streamed, renamed into place at the end)
           and to a virtual camera.
Counting: every frame the source delivers is `in`; each ends as exactly one of `out`
(stylized and emitted), `dropped` (replaced in the slot, or left in it at the stop) or
`skipped` (similarity filter), so in = out + dropped + skipped. Latency is capture to emit.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import runtime, usage

CAMERA_TIMEOUT_S = 5.0
HISTORY = 10_000  # output frames whose latency the summary keeps: a live session may run for hours


@dataclass
class Options:
    prompts: list[str]  # cycled with the p key; the first is used at start
    strength: float = 0.5
    width: int = 64
    height: int = 64
    fit: str = "crop"
    out: Path | None = None  # recording; None = none (unless there is no window to show)
    fps: float | None = None  # of the recording; None = the measured output rate (plays in real time)
    max_frames: int | None = None  # stop after this many output frames
    duration: float | None = None  # ... or after this many seconds
    similarity: float | None = None  # skip frames more similar than this to the last processed one (0-1)
    window: bool = True  # show a window when a display is there
    virtual_cam: bool = False
    seed: int = 0


@dataclass
class Item:
    frame: np.ndarray
    seq: int  # position in the source
    t: float  # capture time (perf_counter)


@dataclass
class Summary:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    skipped: int = 0
    seconds: float = 0.0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    processed: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (seq, newest seq when inference began)
    encodes: int = 0
    recording: Path | None = None
    interrupted: bool = False  # stopped by Ctrl-C (the recording is still finalized)

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return (f"frames in {self.frames_in}, out {self.frames_out}, dropped {self.dropped}, "
                f"skipped {self.skipped}; latency median {np.median(lat):.0f} ms, p95 "
                f"{np.percentile(lat, 95):.0f} ms; {self.fps:.1f} fps")


# ------------------------------------------------------------------ sources

class Source:
    """read() returns the next frame when it is due, as a camera does (None at the end)."""

    fps: float = 30.0
    realtime = True  # a file or synthetic clip is paced like a camera; a camera paces itself
    _due = None

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def wait(self):
        if not self.realtime:
            return
        now = time.perf_counter()
        self._due = now if self._due is None else self._due + 1.0 / self.fps
        time.sleep(max(0.0, self._due - now))

    def close(self) -> None:
        pass


class Synthetic(Source):
    """A coloured circle sweeping across a dark picture; `fps=0` delivers as fast as read."""

    def __init__(self, fps: float = 30.0, size: int = 128, frames: int | None = None, still: bool = False):
        self.fps, self.size, self.frames, self.still, self.i = fps, size, frames, still, 0
        self.realtime = fps > 0

    def read(self):
        import cv2

        if self.frames is not None and self.i >= self.frames:
            return None
        self.wait()
        s = self.size
        img = np.full((s, s, 3), 20, np.uint8)
        x = s // 2 if self.still else int(s * (0.2 + 0.6 * ((self.i * 2) % 60) / 60))
        cv2.circle(img, (x, s // 2), s // 6, (230, 40, 40), -1, cv2.LINE_AA)
        self.i += 1
        return img


class VideoFile(Source):
    def __init__(self, path: Path, loop: bool = False):
        import cv2

        self.path, self.loop = Path(path), loop
        if not self.path.is_file():
            raise usage(f"--source: {path}: no such file (or 'synthetic')")
        self.cap = cv2.VideoCapture(str(self.path))
        ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            raise usage(f"--source: {path}: not a video OpenCV can read")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._first = first

    def read(self):
        import cv2

        self.wait()
        if self._first is not None:
            f, self._first = self._first, None
        else:
            ok, f = self.cap.read()
            if not ok and self.loop:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, f = self.cap.read()
            if not ok:
                return None
        return cv2.cvtColor(f, cv2.COLOR_BGR2RGB)

    def close(self):
        self.cap.release()


class Camera(VideoFile):
    realtime = False  # a camera paces itself

    def __init__(self, device: str):
        import cv2

        self.loop = False
        target = int(device) if str(device).isdigit() else str(device)
        result: dict = {}

        def open_():  # some drivers block for long on a missing device: open off-thread, with a deadline
            cap = cv2.VideoCapture(target)
            result["cap"] = cap
            result["ok"] = cap.isOpened() and cap.read()[0]

        t = threading.Thread(target=open_, daemon=True)
        t.start()
        t.join(CAMERA_TIMEOUT_S)
        tried = f"/dev/video{target}" if isinstance(target, int) and sys.platform.startswith("linux") else str(target)
        if t.is_alive() or not result.get("ok"):
            if result.get("cap") is not None:
                result["cap"].release()
            why = "timed out" if t.is_alive() else "could not open it or read a frame"
            raise runtime(f"--camera {device}: no camera (tried {tried} with OpenCV's default backend: {why}); "
                          "use --source FILE or --source synthetic to run without one")
        self.cap, self.path, self._first = result["cap"], Path(tried), None
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0


def open_source(camera: str | None, source: str | None, loop: bool = False) -> Source:
    if source == "synthetic":
        return Synthetic()
    if source:
        return VideoFile(Path(source), loop)
    return Camera(camera if camera is not None else "0")


# ------------------------------------------------------------------ display

def display_available() -> tuple[bool, str]:
    """Whether cv2.imshow can work here; with the GUI build and no display it aborts the process."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no DISPLAY or WAYLAND_DISPLAY"
    import cv2

    gui = [ln for ln in cv2.getBuildInformation().splitlines() if ln.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() in ("NONE", ""):
        return False, "OpenCV is a headless build (install opencv-python for windows)"
    return True, ""


# ------------------------------------------------------------------ the loop

class Slot:
    """Holds only the newest frame; putting over an untaken one drops it."""

    def __init__(self):
        self.cond = threading.Condition()
        self.item: Item | None = None
        self.closed = False
        self.dropped = 0
        self.newest = -1

    def put(self, item: Item):
        with self.cond:
            if self.item is not None:
                self.dropped += 1
            self.item, self.newest = item, item.seq
            self.cond.notify()

    def take(self, timeout: float = 0.5) -> Item | None:
        with self.cond:
            if self.item is None and not self.closed:
                self.cond.wait(timeout)
            item, self.item = self.item, None
            return item

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Recorder:
    """MP4 streamed to a temp file beside the target, renamed into place by close()."""

    def __init__(self, out: Path, fps: float, size: tuple[int, int]):
        from fractions import Fraction

        import imageio_ffmpeg

        from .output.atomic import temp_beside

        self.out, self.tmp, self.n = Path(out), temp_beside(Path(out), ".mp4"), 0
        # ffmpeg starts in its own process group (imageio-ffmpeg), so Ctrl-C does not cut the file
        self.w = imageio_ffmpeg.write_frames(str(self.tmp), size, fps=Fraction(fps).limit_denominator(1000),
                                             codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2,
                                             ffmpeg_log_level="error", output_params=["-movflags", "+faststart"])
        self.w.send(None)

    def write(self, frame: np.ndarray):
        self.w.send(np.ascontiguousarray(frame))
        self.n += 1

    def close(self) -> Path | None:
        self.w.close()
        if self.n == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.out)
        return self.out


def run(stylizer, source: Source, opts: Options, say=print, controls=None) -> Summary:
    """Stylize the source until it ends, max_frames/duration is reached, q is pressed or Ctrl-C.
    `controls(frame)` gives the ControlNet conditioning of a frame, if any."""
    return Loop(stylizer, source, opts, say, controls).run()


class Loop:
    """One live session: the capture and sink threads around the main thread's stylizing."""

    def __init__(self, stylizer, source: Source, opts: Options, say=print, controls=None):
        import queue

        if not opts.prompts:
            raise usage("live: give at least one --prompt (or a schedule with prompts)")
        self.stylizer, self.source, self.opts, self.say, self.controls = stylizer, source, opts, say, controls
        self.window = False
        if opts.window:
            self.window, why = display_available()
            if not self.window:
                say(f"no window: {why}; recording to {opts.out or 'live.mp4'} and logging fps instead")
                opts.out = opts.out or Path("live.mp4")
        self.vcam = _virtual_cam(opts, source) if opts.virtual_cam else None
        self.rec = None  # opened once the output rate is known (after a few frames), unless --fps sets it
        self.pending: list = []  # frames waiting for the recorder to open
        self.slot, self.outq, self.stop = Slot(), queue.Queue(maxsize=64), threading.Event()
        self.summary = Summary()
        self.lock = threading.Lock()
        self.prompt_i, self.paused, self.last_in, self.last_out = 0, False, None, None
        self.rng = np.random.default_rng(opts.seed)
        self.t0 = time.perf_counter()

    def run(self) -> Summary:
        threads = [threading.Thread(target=self._capture, daemon=True, name="capture"),
                   threading.Thread(target=self._sink, daemon=True, name="sink")]
        for t in threads:
            t.start()
        try:
            while not self._done():
                item = self.slot.take()
                if item is None:
                    if self.slot.closed:
                        break
                    continue
                self._process(item)
                if self.window and self.last_out is not None and self._key(self._show()):
                    break
        except KeyboardInterrupt:
            self.summary.interrupted = True
        finally:
            self._finish(threads)
        return self.summary

    def _done(self) -> bool:
        o, s = self.opts, self.summary
        return bool((o.max_frames and s.frames_out >= o.max_frames)
                    or (o.duration and time.perf_counter() - self.t0 >= o.duration))

    def _capture(self):
        from .output.images import fit

        seq, o = 0, self.opts
        while not self.stop.is_set():
            frame = self.source.read()
            if frame is None:
                break
            with self.lock:
                self.summary.frames_in += 1
            self.slot.put(Item(fit(frame, o.width, o.height, o.fit), seq, time.perf_counter()))
            seq += 1
        self.slot.close()

    def _process(self, item: Item):
        """Stylize the newest frame, unless paused or (similarity filter) it barely changed."""
        s, o = self.summary, self.opts
        if self.paused:
            s.dropped += 1
        elif o.similarity is not None and self.last_in is not None and \
                _skip(similarity(item.frame, self.last_in), o.similarity, self.rng):
            s.skipped += 1
        else:
            s.processed.append((item.seq, self.slot.newest))
            cs = [(c, 0) for c in self.controls(item.frame)] if self.controls else ()
            self.last_out = self.stylizer(item.frame, o.prompts[self.prompt_i], o.strength, controls=cs).image
            self.last_in = item.frame
            s.frames_out += 1
            s.latencies_ms.append(1000 * (time.perf_counter() - item.t))
            self.outq.put(self.last_out)

    def _record(self, frame):
        o = self.opts
        if not o.out:
            return
        if self.rec is None:
            self.pending.append(frame)
            if frame is not None and len(self.pending) < 8 and not o.fps:
                return
            rate = o.fps or max(1.0, round(self.summary.frames_out / max(1e-3, time.perf_counter() - self.t0), 2))
            self.rec = Recorder(o.out, rate, (o.width, o.height))
            for f in self.pending:
                if f is not None:
                    self.rec.write(f)
        elif frame is not None:
            self.rec.write(frame)

    def _sink(self):
        while True:
            item = self.outq.get()
            self._record(item)
            if item is None:
                return
            if self.vcam:
                self.vcam.send(item)

    def _show(self) -> int:
        return _show(self.last_out, self.summary, self.opts.prompts[self.prompt_i], time.perf_counter() - self.t0)

    def _key(self, key: int) -> bool:
        """React to a key in the window; True to quit."""
        if key in (ord("q"), 27):
            return True
        if key == ord(" "):
            self.paused = not self.paused
        elif key == ord("s"):
            from PIL import Image

            snap = Path(f"live-{time.strftime('%Y%m%d-%H%M%S')}.png")
            Image.fromarray(self.last_out).save(snap)
            self.say(f"snapshot {snap}")
        elif key == ord("p"):
            self.prompt_i = (self.prompt_i + 1) % len(self.opts.prompts)
            self.say(f"prompt: {self.opts.prompts[self.prompt_i]}")
        return False

    def _finish(self, threads):
        s = self.summary
        s.seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.outq.put(None)
        threads[1].join()
        threads[0].join(timeout=2.0)
        self.source.close()
        with self.lock:  # replaced in the slot, or still in it at the stop
            s.dropped += self.slot.dropped + (1 if self.slot.item is not None else 0)
        if self.rec:
            s.recording = self.rec.close()
        if self.vcam:
            self.vcam.close()
        if self.window:
            import cv2

            cv2.destroyAllWindows()
        s.encodes = getattr(self.stylizer, "encodes", 0)


def _virtual_cam(opts: Options, source: Source):
    try:
        import pyvirtualcam
    except ImportError:
        raise usage("--virtual-cam needs pyvirtualcam: pip install 'lcmvideo[virtualcam]'") from None
    try:
        return pyvirtualcam.Camera(opts.width, opts.height, opts.fps or source.fps or 30)
    except Exception as e:  # noqa: BLE001 - pyvirtualcam raises RuntimeError without a loopback device
        raise runtime(f"--virtual-cam: {e}") from None


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two frames (as StreamDiffusion's similarity filter compares them)."""
    x, y = a.astype(np.float32).ravel(), b.astype(np.float32).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-8))


def _skip(sim: float, threshold: float, rng) -> bool:
    """Skip with a probability that grows from 0 at the threshold to 1 at identical frames."""
    if sim < threshold:
        return False
    return rng.random() < (sim - threshold) / max(1e-8, 1.0 - threshold) or sim >= 1.0 - 1e-6


def _show(frame: np.ndarray, s: Summary, prompt: str, elapsed: float) -> int:
    import cv2

    scale = max(1, 384 // max(frame.shape[:2]))
    img = cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    lat = s.latencies_ms[-1] if s.latencies_ms else 0
    text = f"{s.frames_out / max(elapsed, 1e-6):.1f} fps  {lat:.0f} ms  {prompt[:40]}"
    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imshow("lcmvideo live", img)
    return cv2.waitKey(1) & 0xFF
