"""The Python API: load a model set once, render many clips.

    from lcmvideo import Session
    session = Session()                                   # the embedded default; or Session(model=..., motion=...)
    frames = session.render(prompt="a red circle", frames=16, seed=1)      # numpy uint8 (T, H, W, 3)
    frames = session.render("prompts/travel.yaml", seed=2)                 # a schedule file + overrides
    session.render_to_file("prompts/travel.yaml", "travel.mp4")           # frames + sidecar, atomically
    session.restyle_to_file("in.mp4", "out.mp4", prompt="a blue circle", strength=0.5)   # video-to-video
    session.live("synthetic", prompts=["a blue circle"], max_frames=100, out="rec.mp4")  # real time

The CLI's `render`, `restyle` and `live` are thin layers over this class.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import schedule
from .schedule import MODEL_KEYS, Settings
from .version import __version__


def _live(session, source=None, camera=None, prompts=("",), *, steps=2, guidance=1.0, seed=0, loop=False,
          stream_batch=False, serve=False, host="127.0.0.1", port=8765, token=None, **options):
    from . import live
    from .pipeline import img2img

    s = session.settings(prompt=prompts[0], steps=steps)
    models = session.models(s)
    options.setdefault("width", models.native_size)
    options.setdefault("height", models.native_size)
    options.setdefault("window", False)
    sty = img2img.Stylizer(models, steps=steps, guidance=guidance, seed=seed, negative_prompt=s.negative_prompt)
    if stream_batch:
        sty = img2img.StreamBatch(sty)
    opts = live.Options(prompts=list(prompts), seed=seed, **options)
    if serve:  # the page, with the browser's camera (source None) or the source watched
        from .web import server as web

        src = source if source is None or isinstance(source, live.Source) else \
            live.open_source(camera, str(source), loop)
        token = web.make_token(host, token)
        sock = web.bind(host, port)
        try:
            return web.serve(sty, src, opts, sock, host, token, say=session.say, announce=print)
        finally:
            sock.close()
    src = source if isinstance(source, live.Source) else live.open_source(camera, source and str(source), loop)
    return live.run(sty, src, opts, say=session.say)


def embedded_note() -> str:
    from .models import embedded

    what = ("the embedded shapes-world family (64x64: coloured circles, squares, triangles; see docs/shapes.md)"
            if embedded.use_shipped() else "the embedded tiny family (random weights, for trying the tool)")
    return f"using {what}; pass --model/--motion/--lcm-lora (or set LCMVIDEO_MODELS_DIR) for real clips"


class Session:
    """Models loaded once and kept while their settings stay the same; encoded prompts and
    conditioning images cached between renders."""

    def __init__(self, *, quiet: bool = True, verbose: int = 0, say=None, **model_settings):
        if "model" in model_settings:  # the CLI's name for the base model
            model_settings["base"] = model_settings.pop("model")
        unknown = set(model_settings) - MODEL_KEYS
        if unknown:
            raise TypeError(f"unknown model settings: {', '.join(sorted(unknown))}")
        self.model_settings = model_settings  # like command-line flags: they win over a schedule's models
        self.quiet, self.verbose = quiet, verbose
        self.say = say or (lambda msg: None)
        self.loads = 0  # how many times a model set was loaded (watch mode keeps this at 1)
        self._models = None
        self._key = None
        self.cache: dict = {}  # encoded prompts, conditioning images: valid for one model set

    def settings(self, source=None, **overrides) -> Settings:
        """A schedule file, a Settings, or nothing, with flag-like overrides (prompt=, frames=, ...)."""
        flags = {**{k: v for k, v in self.model_settings.items() if v is not None}, **overrides}
        return schedule.from_source(source, **flags)

    def spec(self, s: Settings):
        """Which models these settings name, found and identified (nothing loaded)."""
        from . import models

        return models.resolve(s.models, s.sources)

    def check_fits(self, s: Settings, width: int | None = None, height: int | None = None, frames: int | None = None):
        """Refuse, before loading anything, work that could not fit in the device's memory even empty."""
        from .pipeline import budget

        spec = self.spec(s)
        config = spec.base.sniffed.detail.get("config", {}) if spec.base.sniffed else {}
        native = config.get("sample_size", 64) * 2 ** (len(config.get("block_out_channels", (0,) * 4)) - 1)
        budget.check(frames or s.frames, s.context.length, width or s.width or native, height or s.height or native,
                     s.guidance > 1 or any(k.params.get("guidance", 0) > 1 for k in s.resolved), spec.device,
                     config.get("block_out_channels", [320])[0], 2 if spec.dtype in ("float16", "bfloat16") else 4)

    def models(self, s: Settings):
        """The loaded model set for these settings: reused when the model settings are unchanged, and
        when only clip skip, the sampler, gamma or lcm_map change (the set takes them as it is)."""
        from . import models
        from .pipeline import ipadapter

        spec = self.spec(s)
        if spec.fuse and schedule.travels_lora(s):
            spec.fuse = False
            self.say("note: LoRA weights travel in this schedule, so LoRAs stay unfused (per-window weights, slower)")
        if spec.fuse and spec.lcm_map is not None and spec.lcm_lora.path is not None:
            spec.fuse = False
            self.say("note: lcm_map changes the LCM-LoRA's scale at every step, which a fused LoRA cannot; "
                     "LoRAs stay unfused (slower)")
        check_embeddings(s, spec)
        ipadapter.check_models(s, spec)
        key = (tuple((r.role, str(r.path), r.weight, r.key) for r in spec.refs()), spec.lcm_lora_scale, spec.device,
               spec.dtype, spec.fuse, tuple(models.file_stamp(r.path) for r in spec.refs() if r.path),
               tuple((r.key, models.file_stamp(r.path)) for r in spec.embeddings))
        if key != self._key:
            if spec.embedded:
                self.say(embedded_note())
            for note in spec.notes:
                self.say(f"note: {note}")
            previous, self._models, self._key = self._models, None, None  # lent to load, which takes it apart
            self._models = models.load(spec, verbose=self.verbose > 0, quiet=self.quiet, previous=previous)
            self._key = key
            self.cache = {}
            self.loads += 1
        else:
            models.retune(self._models, spec)
        return self._models

    def render(self, source=None, **overrides) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 of one clip: `source` a schedule file, a Settings or nothing, with
        this Session's model settings and the overrides applied (to a copy)."""
        from .pipeline import ipadapter, text2video

        s = self.settings(source, **overrides)
        schedule.require_prompt(s)
        ipadapter.check(s)
        check_inputs(s)
        self.check_fits(s)
        return text2video.render(self.models(s), s, quiet=self.quiet, cache=self.cache)

    def render_to_file(self, source=None, output=None, **overrides) -> Path:
        """Render and write the clip with its sidecar; returns the output path."""
        from .output import video
        from .pipeline import ipadapter, text2video

        t0 = time.perf_counter()
        s = self.settings(source, **overrides)
        schedule.require_prompt(s)
        ipadapter.check(s)
        out = Path(output or s.output or default_output(source, s)).expanduser()
        fmt = video.format_for(out, s.format)
        video.check_writable(out, fmt)
        for w in s.warnings:
            self.say(f"warning: {w}")
        check_inputs(s)
        self.check_fits(s)
        loaded = self.models(s)
        t_load = time.perf_counter()
        s = text2video.resolve_settings(s, loaded)  # the seed, size and noise the sidecar records
        timing = {}
        frames = text2video.render(loaded, s, quiet=self.quiet, cache=self.cache, timing=timing)
        spec = loaded.spec
        meta = sidecar("render", fmt, s, spec, frames, job=s.job)
        meta["timing_s"] = {"load": round(t_load - t0, 3), **{k: round(v, 3) for k, v in timing.items()}}
        if spec.device.startswith("cuda"):
            import torch

            meta["timing_s"]["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        video.write(frames, out, s.fps, fmt, meta, quiet=self.quiet)
        self.say(f"wrote {out}: {frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {s.fps:g} fps, "
                 f"seed {s.seed} ({time.perf_counter() - t0:.1f}s)")
        return out


    def live(self, source=None, camera=None, prompts=("",), **options):
        """Stylize a camera, video file or live.Source in real time; returns the live.Summary.
        Options as live.Options (out=, max_frames=, duration=, strength=, similarity=, ...), and
        stream_batch=True (StreamDiffusion's denoising batch); serve=True (host=, port=, token=)
        serves the web page instead, with the browser's camera when source is None."""
        return _live(self, source, camera, prompts, **options)

    def restyle(self, video, source=None, options=None, output=None, **overrides):
        """Restyle a video (file or PNG folder): (frames (T, H, W, 3) uint8, its Source, the Settings).

        `source` is a schedule file or Settings (prompts travel over the input's frames);
        `options` a restyle.Options; work in progress goes beside `output` (resumable)."""
        from .pipeline import ipadapter, restyle

        opts = options or restyle.Options()
        size = {k: overrides.pop(k, None) for k in ("width", "height")}
        fps = overrides.pop("fps", None)
        probe = self.settings(source, frames=1_000_000, **overrides)  # frames unknown until the input is read
        ipadapter.check(probe)
        models = self.models(probe)
        src = restyle.load_source(Path(video), opts, models.native_size, size["width"], size["height"])
        self.check_fits(probe, src.frames.shape[2], src.frames.shape[1], len(src.frames))
        s = self.settings(source, frames=len(src.frames), fps=fps or round(src.fps, 3), **overrides)
        schedule.require_prompt(s)
        ipadapter.check(s)
        out = Path(output) if output else Path(video).with_name(Path(video).stem + ".restyled.mp4")
        models = self.models(s)
        s = restyle.settings_for(models, s, src)
        frames = restyle.restyle(models, s, src, opts, out, quiet=self.quiet, say=self.say)
        return frames, src, s

    def restyle_to_file(self, video, output=None, source=None, options=None, **overrides) -> Path:
        """Restyle and write the clip (audio copied into MP4), its sidecar and flicker report."""
        import shutil

        from .output import flow
        from .output import video as vid
        from .pipeline import restyle

        t0 = time.perf_counter()
        opts = options or restyle.Options()
        video = Path(video)
        out = Path(output or overrides.pop("output", None) or video.with_name(video.stem + ".restyled.mp4"))
        fmt = vid.format_for(out, overrides.pop("format", None))
        vid.check_writable(out, fmt)
        try:
            frames, src, s = self.restyle(video, source, opts, out, **overrides)
        except KeyboardInterrupt:
            if restyle.work_dir(out).exists():
                self.say(f"finished work is kept in {restyle.work_dir(out)}: run the same command with --resume")
            raise
        t_run = time.perf_counter()
        meta = sidecar("restyle", fmt, s, self._models.spec, frames)
        meta["input"] = {"path": str(video.resolve()), "start_s": round(src.start_s, 3), "fps": src.fps}
        meta["restyle"] = {k: v for k, v in vars(opts).items() if k not in ("resume", "restart")}
        if opts.report:
            meta["flicker"] = flow.report(frames, src.frames)
            f = meta["flicker"]
            self.say(f"flicker: warping error {f['warping_error']:.4f} (input {f['source_warping_error']:.4f}), "
                     f"frame difference {f['frame_difference']:.4f} (input {f['source_frame_difference']:.4f})")
        audio = fmt == "mp4" and opts.audio and restyle.has_audio(video)
        meta["output"]["audio"] = audio
        meta["timing_s"] = {"restyle": round(t_run - t0, 3)}
        if audio:
            silent = vid.write(frames, out.with_name(f".{out.name}.video.mp4"), s.fps, "mp4", None)
            tmp = out.with_name(f".{out.name}.mux.mp4")
            try:
                restyle.mux_audio(silent, video, src.start_s, len(frames) / s.fps, tmp)
                tmp.replace(out)
            finally:
                silent.unlink(missing_ok=True)
                tmp.unlink(missing_ok=True)
            vid.write_text(vid.sidecar_path(out), json.dumps(meta, indent=2, default=str) + "\n")
        else:
            vid.write(frames, out, s.fps, fmt, meta, quiet=self.quiet)
        shutil.rmtree(restyle.work_dir(out), ignore_errors=True)
        self.say(f"wrote {out}: {frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {s.fps:g} fps, "
                 f"seed {s.seed}{', with audio' if audio else ''} ({time.perf_counter() - t0:.1f}s)")
        return out


def check_inputs(s: Settings) -> None:
    """Refuse, before any model loads, an init image that is missing or unreadable, and SparseCtrl
    without one."""
    from .pipeline import img2vid

    img2vid.check_sparsectrl(s)
    if s.init_image:
        img2vid.read_picture(s.init_image)


def check_embeddings(s: Settings, spec) -> None:
    """Every `embedding:NAME` in the prompts names a known embedding (before anything is loaded or written)."""
    from .pipeline import text

    names = {r.key.lower() for r in spec.embeddings}
    for k in s.resolved:
        for t in (schedule.full_prompt(s, k), schedule.negative_for(s, k)):
            _, missing = text.embeddings_in(t, names)
            if missing:
                raise text.missing_embedding(missing[0], spec.embedding_dirs, [r.key for r in spec.embeddings])


def default_output(schedule_file, s: Settings) -> Path:
    stem = Path(schedule_file).name.split(".")[0] if isinstance(schedule_file, (str, Path)) else "lcmvideo"
    fmt = s.format or "mp4"
    return Path(stem) if fmt == "png" else Path(f"{stem}.{fmt}")


def sidecar(command: str, fmt: str, s: Settings, spec, frames: np.ndarray, **mark) -> dict:
    """The metadata every written clip carries: enough to make it again."""
    from . import models

    ip = models.resolve_ip_adapter(s.ip_adapter, spec, s.sources) if s.ip_adapter is not None else None
    described = models.describe(spec, embeddings_used(s, spec))
    if ip is not None:
        described["ip_adapter"] = {"path": str(ip[0].path), "layout": ip[0].sniffed.layout,
                                   "sha256": models.sha256_prefix(ip[0].path), "encoder": str(ip[1].path),
                                   "encoder_sha256": models.sha256_prefix(ip[1].path), "source": ip[1].source}
    return {
        schedule.SIDECAR_MARK: {"version": __version__, "command": command, "format": fmt, **mark},
        "settings": recorded_settings(s, spec, ip),
        "models": described,
        "versions": versions(),
        "output": {"frames": int(frames.shape[0]), "width": int(frames.shape[2]), "height": int(frames.shape[1]),
                   "fps": s.fps, "seed": s.seed},
    }


def embeddings_used(s: Settings, spec) -> list[str]:
    """The embeddings the prompts use (the negative prompts' only where guidance turns CFG on)."""
    from .pipeline import text

    names = {r.key.lower() for r in spec.embeddings}
    cfg = s.guidance > 1 or any(k.params.get("guidance", 0) > 1 for k in s.resolved)
    used = []
    for k in s.resolved:
        for t in (schedule.full_prompt(s, k), *([schedule.negative_for(s, k)] if cfg else [])):
            used += [n for n in text.embeddings_in(t, names)[0] if n not in used]
    return used


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"lcmvideo": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "peft", "numpy", "imageio", "imageio-ffmpeg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def recorded_settings(s: Settings, spec, ip=None) -> dict:
    """The settings as a schedule that re-renders the same frames: models by absolute path (`ip`: the
    IP-Adapter's and its encoder's ModelRefs, as resolve_ip_adapter gives them)."""
    d = s.to_dict()
    m = d["models"]
    m["base"] = None if spec.embedded else str(spec.base.path.resolve())
    m["motion"] = None if spec.embedded else str(spec.motion.path.resolve())
    m["lcm_lora"] = "none" if spec.lcm_lora.path is None else (
        None if spec.embedded else str(spec.lcm_lora.path.resolve()))
    m["loras"] = [{"path": str(r.path.resolve()), "weight": r.weight, "name": r.key} for r in spec.loras]
    m["motion_loras"] = [{"path": r.given if r.given.lower().startswith("embedded:") else str(r.path.resolve()),
                          "weight": r.weight, "name": r.key} for r in spec.motion_loras]
    m["vae"] = str(spec.vae.path.resolve()) if spec.vae else None
    m["sparsectrl"] = str(spec.sparsectrl.path.resolve()) if spec.sparsectrl else None
    # the named embeddings by path; those found in models_dir by their path too, as models_dir is not kept
    m["embeddings"] = [str(r.path.resolve()) for r in spec.embeddings if r.key.lower() in embeddings_used(s, spec)
                       or not r.source.startswith("found in")]
    m["models_dir"] = None
    m["device"], m["dtype"] = spec.device, spec.dtype
    if ip is not None:  # the files by absolute path, the encoder as found
        ref, enc = ip
        d["ip_adapter"].update(model=str(ref.path.resolve()), encoder=str(enc.path.resolve()),
                               image=str(Path(s.ip_adapter.image).expanduser().resolve()))
    if d.get("init_image"):
        d["init_image"] = str(Path(d["init_image"]).expanduser().resolve())
    d["output"] = None
    return d
