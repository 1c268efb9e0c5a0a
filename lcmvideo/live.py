"""Live: a camera, a video file, a synthetic source or a browser's camera stylized in real time;
the newest frame wins.

Three threads, no backlog:
  capture  reads the source and puts each frame into a one-frame slot, replacing one that
           inference has not taken yet (that frame counts as dropped). A browser's frames come
           into the same slot from the web server's thread (`Loop.offer`); an unpaced source is
           read only when the main thread waits for a frame, so none is made just to be
           dropped or waits while the model works;
  main     takes the newest frame, optionally skips it when it barely changed (similarity
           filter), stylizes it (img2img.Stylizer: prompts encoded once, the same noise each
           frame; or img2img.StreamBatch: successive frames at different steps in one UNet
           batch), shows it (a window, the web page) and answers the client that sent it;
  sink     writes outputs to the recording (MP4, streamed, renamed into place at the end)
           and to a virtual camera.
Counting: every frame that comes in is `in`; each ends as exactly one of `out` (stylized and
emitted), `dropped` (replaced in the slot, left in it or in the stream batch at the stop, or
thrown away by a settings change), `skipped` (similarity filter) or `rejected` (a client's frame
that would not decode), so in = out + dropped + skipped + rejected. Latency is capture (or
arrival) to emit. Prompt, strength, steps, seed and the similarity threshold can change while
the loop runs (`Loop.update`, the window's p key, the web page).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import LcmvideoError, runtime, usage

CAMERA_TIMEOUT_S = 5.0
HISTORY = 10_000  # output frames whose latency the summary keeps: a live session may run for hours
STEPS_RANGE = (1, 8)


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


@dataclass(frozen=True)
class Params:
    """What the loop runs with now; a new value replaces it (Loop.update)."""

    prompt: str
    strength: float
    steps: int
    seed: int
    similarity: float | None


def check_params(p: Params, changes: dict) -> Params:
    """`p` with `changes` applied, each checked; a bad one is a usage error naming it."""
    allowed = {"prompt", "strength", "steps", "seed", "similarity"}
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise usage(f"settings: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    c = dict(changes)

    def number(key, lo, hi, kind=float):
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise usage(f"settings: {key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        if not lo <= v <= hi:
            raise usage(f"settings: {key} must be in [{lo}, {hi}], got {v}")
        c[key] = kind(v)

    if "prompt" in c:
        if not isinstance(c["prompt"], str) or not c["prompt"].strip() or len(c["prompt"]) > 2000:
            raise usage("settings: prompt must be a non-empty text of at most 2000 characters")
    if "strength" in c:
        number("strength", 0.05, 1.0)
    if "steps" in c:
        number("steps", *STEPS_RANGE, kind=int)
    if "seed" in c:
        number("seed", 0, 2**64 - 1, kind=int)
    if "similarity" in c and c["similarity"] is not None:
        number("similarity", 0.0, 1.0)
    return replace(p, **c)


@dataclass
class Item:
    frame: object  # (H, W, 3) uint8 fitted to the model's size, or a client's encoded image (bytes)
    seq: int  # position in the input
    t: float  # capture (or arrival) time, perf_counter
    reply: object = None  # the web client that sent it (see web.server.Client), or None
    ident: object = None  # the client's id for it


@dataclass
class Summary:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    processed: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (seq, newest seq when inference began)
    emitted: deque = field(default_factory=lambda: deque(maxlen=120))  # emit times, for the current rate
    encodes: int = 0
    recording: Path | None = None  # the last recording written
    recorded: int = 0  # its frames
    interrupted: bool = False  # stopped by Ctrl-C (the recording is still finalized)

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds else 0.0

    def rate(self) -> float:
        """Output frames per second over the last few seconds."""
        e = self.emitted
        return (len(e) - 1) / (e[-1] - e[0]) if len(e) > 1 and e[-1] > e[0] else 0.0

    def line(self) -> str:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        rejected = f", rejected {self.rejected}" if self.rejected else ""
        return (f"frames in {self.frames_in}, out {self.frames_out}, dropped {self.dropped}, "
                f"skipped {self.skipped}{rejected}; latency median {np.median(lat):.0f} ms, p95 "
                f"{np.percentile(lat, 95):.0f} ms; {self.fps:.1f} fps")


# ------------------------------------------------------------------ sources

class Source:
    """read() returns the next frame when it is due, as a camera does (None at the end)."""

    fps: float = 30.0
    realtime = True  # a file or synthetic clip is paced like a camera; a camera paces itself
    _due = None

    @property
    def pull(self) -> bool:
        """Read only when a frame is wanted (unpaced: frames cost nothing to wait for)."""
        return not self.realtime and not isinstance(self, Camera)

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

def has_display() -> bool:
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def display_available() -> tuple[bool, str]:
    """Whether a window can open here: a display, and tkinter (the standard library's GUI, which
    Pillow draws into). OpenCV's GUI is not used: the default install carries its headless build."""
    if not has_display():
        return False, "no DISPLAY or WAYLAND_DISPLAY"
    from . import window

    return window.available()


# ------------------------------------------------------------------ the loop

class Slot:
    """Holds only the newest frame; putting over an untaken one drops it."""

    def __init__(self):
        self.cond = threading.Condition()
        self.item: Item | None = None
        self.closed = False
        self.dropped = 0
        self.newest = -1
        self.waiting = False

    def put(self, item: Item) -> Item | None:
        """Put `item` in; returns the one it replaced (dropped), if any."""
        with self.cond:
            old = self.item
            if old is not None:
                self.dropped += 1
            self.item, self.newest = item, item.seq
            self.cond.notify_all()
            return old

    def take(self, timeout: float = 0.5) -> Item | None:
        with self.cond:
            if self.item is None and not self.closed and timeout > 0:
                self.waiting = True  # a pulled source reads now (wait_wanted)
                self.cond.notify_all()
                self.cond.wait(timeout)
                self.waiting = False
            item, self.item = self.item, None
            return item

    def poke(self):
        """Wake a take() that waits, so that requests are served at once."""
        with self.cond:
            self.cond.notify_all()

    def wait_wanted(self, stop: threading.Event):
        """Until a take() waits for a frame: an unpaced source's frame is then as fresh as can be."""
        with self.cond:
            while not (self.waiting and self.item is None) and not self.closed and not stop.is_set():
                self.cond.wait(0.1)

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Recorder:
    """MP4 streamed to a temp file beside the target (output.atomic), renamed into place by close()."""

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
        from .output.atomic import remove, swap_in

        try:
            self.w.close()
            if self.n == 0:
                remove(self.tmp)
                return None
            swap_in(self.tmp, self.out)
        except BaseException:
            remove(self.tmp)
            raise
        return self.out


def save_snapshot(frame: np.ndarray, path: Path | None = None) -> Path:
    """A PNG of `frame`, written atomically (default live-<time>.png here)."""
    from PIL import Image

    from .output.atomic import replacing

    path = Path(path or f"live-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.png")
    with replacing(path, ".png", "write the snapshot") as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")
    return path


def run(stylizer, source: Source | None, opts: Options, say=print, controls=None, views=()) -> Summary:
    """Stylize the source until it ends, max_frames/duration is reached, q is pressed or Ctrl-C.
    `controls(frame)` gives the ControlNet conditioning of a frame, if any; `views` see every
    output (the web page's hub)."""
    return Loop(stylizer, source, opts, say, controls, views).run()


def tune(stylizer, steps: int, seed: int):
    """Set a stylizer's steps and seed between frames (a StreamBatch, or a Stylizer, whose fixed
    noise is drawn again for a new seed)."""
    if hasattr(stylizer, "configure"):
        stylizer.configure(steps=steps, seed=seed)
        return
    if getattr(stylizer, "steps", steps) != steps:
        stylizer.steps = steps
    if getattr(stylizer, "seed", seed) != seed:
        stylizer.seed = seed
        getattr(stylizer, "_noise", {}).clear()


class Loop:
    """One live session: the capture and sink threads around the main thread's stylizing."""

    def __init__(self, stylizer, source: Source | None, opts: Options, say=print, controls=None, views=()):
        if not opts.prompts:
            raise usage("live: give at least one --prompt (or a schedule with prompts)")
        self.stylizer, self.source, self.opts, self.say, self.controls = stylizer, source, opts, say, controls
        self.stream = hasattr(stylizer, "push")
        self.views = list(views)
        self.window = None
        if opts.window:
            ok, why = display_available()
            if ok:
                try:
                    from . import window

                    self.window = window.Window(self.request, opts.width, opts.height)
                except LcmvideoError as e:
                    ok, why = False, e.message
            if not ok:
                say(f"no window: {why}; recording to {opts.out or 'live.mp4'} and logging fps instead")
                opts.out = opts.out or Path("live.mp4")
        if self.window:
            self.views.append(self.window)
        self.vcam = _virtual_cam(opts, source) if opts.virtual_cam else None
        self.rec = None  # opened once the output rate is known (after a few frames), unless --fps sets it
        self._rec_target = opts.out  # the sink's: where the current recording goes
        self.recording = opts.out is not None  # the main thread's: whether one is on
        self.pending: list = []  # frames waiting for the recorder to open
        self.slot, self.outq, self.stop = Slot(), queue.Queue(maxsize=64), threading.Event()
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.summary = Summary()
        self.lock = threading.Lock()
        self.params = Params(opts.prompts[0], opts.strength, getattr(stylizer, "steps", 2), opts.seed, opts.similarity)
        self.prompt_i, self.paused, self.last_in, self.last_out, self.quit = 0, False, None, None, False
        self.seq = 0
        self.rng = np.random.default_rng(opts.seed)
        self.t0 = time.perf_counter()

    # ---- from any thread

    def offer(self, frame, reply=None, ident=None) -> None:
        """A frame from outside (a browser's camera): into the slot, replacing a waiting one."""
        with self.lock:
            self.summary.frames_in += 1
            item = Item(frame, self.seq, time.perf_counter(), reply, ident)
            self.seq += 1
        old = self.slot.put(item)
        if old is not None and old.reply is not None:
            old.reply.notice("dropped", old.ident)

    def update(self, **changes) -> Params:
        """Change the settings (checked; a bad value raises a usage error naming it)."""
        with self.lock:
            self.params = check_params(self.params, changes)
            if "prompt" in changes and changes["prompt"] in self.opts.prompts:
                self.prompt_i = self.opts.prompts.index(changes["prompt"])
            return self.params

    def request(self, action: str, reply=None, **kw):
        """quit, pause, snapshot, next_prompt or record (on=True/False): done by the main thread between frames."""
        self.requests.put((action, reply, kw))
        self.slot.poke()

    def state(self) -> dict:
        with self.lock:
            return {**asdict(self.params), "paused": self.paused, "recording": self.recording,
                    "prompts": list(self.opts.prompts)}

    # ---- the main thread

    def run(self) -> Summary:
        threads = [threading.Thread(target=self._sink, daemon=True, name="sink")]
        if self.source is not None:
            threads.append(threading.Thread(target=self._capture, daemon=True, name="capture"))
        for t in threads:
            t.start()
        try:
            while not self._done():
                self._serve_requests()
                if self.quit:
                    break
                busy = self.stream and self.stylizer.pending()
                # with frames in the stream batch, wait a moment for a new one, then move the batch on alone
                item = self.slot.take(0.005 if busy else (0.02 if self.window else 0.5))
                self._serve_requests()  # those sent before this frame came in (a page's Record, then frames)
                if item is not None:
                    self._process(item)
                elif busy:
                    self._advance()
                elif self.slot.closed:
                    break
                for v in self.views:
                    v.pump()
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

        o, pull = self.opts, self.source.pull
        while not self.stop.is_set():
            if pull:
                self.slot.wait_wanted(self.stop)
            frame = self.source.read()
            if frame is None:
                break
            with self.lock:
                self.summary.frames_in += 1
                item = Item(fit(frame, o.width, o.height, o.fit), self.seq, time.perf_counter())
                self.seq += 1
            self.slot.put(item)
        self.slot.close()

    def _drop(self, item: Item, kind: str = "dropped"):
        if kind == "skipped":
            self.summary.skipped += 1
        else:
            self.summary.dropped += 1
        if item.reply is not None:
            item.reply.notice(kind, item.ident)

    def _frame(self, item: Item):
        """The item's pixels at the model's size: a client's image is decoded here, so frames
        dropped in the slot are never decoded."""
        if not isinstance(item.frame, (bytes, bytearray, memoryview)):
            return item.frame
        from .output.images import fit
        from .web import protocol

        try:
            frame = protocol.decode_image(bytes(item.frame))
        except LcmvideoError as e:
            self.summary.rejected += 1
            self.say(f"client {getattr(item.reply, 'name', '?')}: frame {item.ident}: {e.message}")
            if item.reply is not None:
                item.reply.notice("error", item.ident, e.message)
            return None
        return fit(frame, self.opts.width, self.opts.height, self.opts.fit)

    def _process(self, item: Item):
        """Stylize the newest frame, unless paused or (similarity filter) it barely changed."""
        s, self.work_t0 = self.summary, time.perf_counter()
        with self.lock:
            p = self.params
        if self.paused:
            self._drop(item)
            return
        frame = self._frame(item)
        if frame is None:
            return
        if p.similarity is not None and self.last_in is not None and self.last_in.shape == frame.shape and \
                _skip(similarity(frame, self.last_in), p.similarity, self.rng):
            self._drop(item, "skipped")
            return
        tune(self.stylizer, p.steps, p.seed)
        s.processed.append((item.seq, self.slot.newest))
        cs = [(c, 0) for c in self.controls(frame)] if self.controls else ()
        self.last_in = frame
        if self.stream:
            r = self.stylizer.push(frame, p.prompt, p.strength, tag=item, controls=cs)
            for old in r.discarded:
                self._drop(old)
            for done, out in r.done:
                self._emit(done, out.image, p)
        else:
            self._emit(item, self.stylizer(frame, p.prompt, p.strength, controls=cs).image, p)

    def _advance(self):
        """Stream batch with no new frame: move the frames in flight on, so none waits for input."""
        self.work_t0 = time.perf_counter()
        with self.lock:
            p = self.params
        for done, out in self.stylizer.advance(p.prompt).done:
            self._emit(done, out.image, p)

    def _emit(self, item: Item, image: np.ndarray, p: Params):
        s, now = self.summary, time.perf_counter()
        self.last_out = image
        s.frames_out += 1
        s.emitted.append(now)
        s.latencies_ms.append(1000 * (now - item.t))
        info = {"seq": item.seq, "latency_ms": s.latencies_ms[-1], "work_ms": 1000 * (now - self.work_t0),
                "fps": s.rate(), "prompt": p.prompt,
                "elapsed": now - self.t0, "from_client": item.reply is not None}
        if item.reply is not None:
            item.reply.frame(item.ident, image, info)
        for v in self.views:
            v.show(image, info)
        self.outq.put(image)

    def _serve_requests(self):
        while True:
            try:
                action, reply, kw = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                self._act(action, reply, **kw)
            except LcmvideoError as e:
                self.say(f"{action}: {e.message}")
                if reply is not None:
                    reply.notice("error", None, e.message)

    def _act(self, action: str, reply=None, **kw):
        if action == "quit":
            self.quit = True
        elif action == "pause":
            self.paused = kw.get("on", not self.paused)
            self.say("paused" if self.paused else "resumed")
        elif action == "snapshot":
            if self.last_out is None:
                raise usage("snapshot: no stylized frame yet")
            path = save_snapshot(self.last_out)
            self.say(f"snapshot {path}")
            if reply is not None:
                reply.notice("snapshot", None, str(path))
        elif action == "next_prompt":
            with self.lock:
                self.prompt_i = (self.prompt_i + 1) % len(self.opts.prompts)
                self.params = replace(self.params, prompt=self.opts.prompts[self.prompt_i])
            self.say(f"prompt: {self.params.prompt}")
        elif action == "record":
            self._toggle_record(bool(kw.get("on", not self.recording)), reply, kw.get("path"))
        else:
            raise usage(f"unknown action {action!r}")

    def _toggle_record(self, on: bool, reply, path=None):
        """Start or stop a recording (the page's button): the sink opens and closes it in frame order."""
        if on == self.recording:
            return
        self.recording = on
        if on:
            out = Path(path or self.opts.out or f"live-{time.strftime('%Y%m%d-%H%M%S')}.mp4")
            self.outq.put(("start", out, reply))
            self.say(f"recording to {out}")
            if reply is not None:
                reply.notice("recording", None, str(out))
        else:
            self.outq.put(("stop", None, reply))

    # ---- the sink thread

    def _record(self, frame):
        """Frames (or None at the end) to the current recording, opened once the rate is known."""
        o = self.opts
        if self._rec_target is None:
            return
        if self.rec is None:
            self.pending.append(frame)
            if frame is not None and len(self.pending) < 8 and not o.fps:
                return
            rate = o.fps or max(1.0, round(self.summary.rate() or self.summary.frames_out
                                           / max(1e-3, time.perf_counter() - self.t0), 2))
            self.rec = Recorder(self._rec_target, rate, (o.width, o.height))
            for f in self.pending:
                if f is not None:
                    self.rec.write(f)
            self.pending = []
        elif frame is not None:
            self.rec.write(frame)

    def _stop_recording(self, reply=None):
        self._record(None)  # opens it if frames are still waiting for the rate
        rec, self.rec, self._rec_target, self.pending = self.rec, None, None, []
        path = rec.close() if rec else None
        if path:
            self.summary.recording, self.summary.recorded = path, rec.n
            self.say(f"recorded {path}: {rec.n} frames")
        if reply is not None:
            reply.notice("recorded", None, str(path) if path else "")

    def _sink(self):
        while True:
            item = self.outq.get()
            try:
                if isinstance(item, tuple):
                    if item[0] == "start":
                        self._rec_target, self.pending = item[1], []
                    else:
                        self._stop_recording(item[2])
                    continue
                self._record(item)
            except (OSError, LcmvideoError) as e:  # a full disk, ffmpeg gone: stop recording, keep going
                from .output.atomic import reason

                self.say(f"record: {e.message if isinstance(e, LcmvideoError) else reason(e)}; recording stopped")
                rec, self.rec, self._rec_target, self.pending = self.rec, None, None, []
                if rec is not None:
                    try:
                        rec.w.close()
                    except (OSError, RuntimeError):
                        pass
                    rec.tmp.unlink(missing_ok=True)
            if item is None:
                return
            if self.vcam:
                self.vcam.send(item)

    # ---- the end

    def _finish(self, threads):
        s = self.summary
        s.seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.slot.close()
        self.outq.put(None)
        threads[0].join()
        for t in threads[1:]:
            t.join(timeout=2.0)
        if self.source is not None:
            self.source.close()
        with self.lock:  # replaced in the slot, or still in it (or in the stream batch) at the stop
            left = [self.slot.item] if self.slot.item is not None else []
            s.dropped += self.slot.dropped + len(left)
            if self.stream:
                s.dropped += self.stylizer.pending()
        if self.rec:
            n, path = self.rec.n, self.rec.close()
            if path:
                s.recording, s.recorded = path, n
        if self.vcam:
            self.vcam.close()
        for v in self.views:
            v.close()
        s.encodes = getattr(self.stylizer, "encodes", 0)


def _virtual_cam(opts: Options, source: Source | None):
    try:
        import pyvirtualcam
    except ImportError:
        raise usage("--virtual-cam needs pyvirtualcam: pip install 'lcmvideo[virtualcam]'") from None
    try:
        return pyvirtualcam.Camera(opts.width, opts.height, opts.fps or (source.fps if source else 0) or 30)
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
