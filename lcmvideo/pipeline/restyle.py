"""Video-to-video: restyle an existing clip, frame by frame or with AnimateDiff, resumably.

`frames` mode runs LCM img2img per frame (img2img.Stylizer) with the flicker cures that
matter most: the same noise for every frame, prompts encoded once, and optionally the
previous output, warped along the source's optical flow, blended into each frame's start.
`animatediff` mode noises the whole clip's latents to the strength and denoises them with
the motion module over context windows (text2video.denoise), as diffusers'
AnimateDiffVideoToVideoPipeline does with `enforce_inference_steps=True`.

Work in progress lives in a folder beside the output (`out.mp4.work/`): finished frames
(frames mode) or the latents after each finished step (animatediff mode). `resume=True`
continues from there; the final encode is atomic and removes the folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import runtime, usage
from ..output.atomic import replacing
from ..output.images import read_image
from ..schedule import Settings

MODES = ("frames", "animatediff")


@dataclass
class Options:
    mode: str = "frames"  # frames | animatediff
    start: str | None = None  # where to start in the input: seconds ("2.5s") or a frame number ("40")
    end: str | None = None  # where to stop (exclusive), same forms
    every: int = 1  # keep every Nth input frame (the output fps is divided by N)
    max_frames: int | None = None  # at most this many output frames
    fit: str = "crop"  # crop | pad | stretch: how the input meets width x height
    blend: float = 0.0  # frames mode: share of the (warped) previous output in each frame's start, 0-1
    blend_space: str = "latent"  # latent | pixel: where that blending happens
    flow: bool = True  # warp the previous output along the source's optical flow before blending
    fixed_noise: bool = True  # the same noise for every frame (frames mode)
    audio: bool = True  # copy the input's audio into an MP4 output
    resume: bool = False  # continue an interrupted restyle from its work folder
    restart: bool = False  # discard an interrupted restyle's work folder
    report: bool = True  # measure flicker (warping error) of output and input


@dataclass
class Source:
    frames: np.ndarray  # (T, H, W, 3) uint8, selected and resized
    fps: float  # of the selected frames
    start_s: float  # time of the first selected frame in the input, seconds
    duration_s: float
    path: Path


def _position(text: str | None, fps: float, n: int, flag: str) -> int | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|ms)?\s*", str(text))
    if not m:
        raise usage(f"{flag}: {text!r} is neither a frame number (40) nor a time (2.5s, 800ms)")
    v, unit = float(m.group(1)), m.group(2)
    i = round(v * fps) if unit == "s" else (round(v * fps / 1000) if unit == "ms" else int(v))
    if unit is None and v != int(v):
        raise usage(f"{flag}: a frame number is a whole number; for a time write {text}s")
    if i > n:
        raise usage(f"{flag}: {text} is beyond the input's {n} frames ({n / fps:.2f}s)")
    return i


def size_for(w: int, h: int, native: int, width: int | None, height: int | None) -> tuple[int, int]:
    """Output size: given sides win; a missing side keeps the input's aspect; with neither, the
    shorter side becomes the model's native size. Sides are rounded down to multiples of 8."""
    def r8(v):
        return max(8, int(v) // 8 * 8)

    if width and height:
        return r8(width), r8(height)
    if width:
        return r8(width), r8(width * h / w)
    if height:
        return r8(height * w / h), r8(height)
    scale = native / min(w, h)
    return r8(w * scale), r8(h * scale)


def load_source(path: Path, opts: Options, native: int, width: int | None, height: int | None) -> Source:
    """Read, select (start/end/every/max_frames) and resize the input frames. Frames are decoded one at
    a time and only the selected ones are kept, at the output size; decoding stops after the last one,
    so a few seconds of a long video cost a few seconds' memory and time."""
    from ..output import video
    from ..output.images import fit

    path = Path(path)
    frames, fps, count = video.open_frames(path)
    n = count or math.inf  # where the container does not say, the bounds are checked once decoded
    a = _position(opts.start, fps, n, "--start") or 0
    b = _position(opts.end, fps, n, "--end")
    every = max(1, opts.every)
    last = math.inf if b is None else b  # one past the last frame wanted
    if opts.max_frames:
        last = min(last, a + every * (opts.max_frames - 1) + 1)
    picked, seen, size = [], 0, None
    for i, f in enumerate(itertools.islice(frames, None if last == math.inf else last)):
        seen = i + 1
        if size is None:
            size = size_for(f.shape[1], f.shape[0], native, width, height)
        if i >= a and (i - a) % every == 0:
            picked.append(fit(f, *size, opts.fit))
    frames.close()
    if count is None and seen < last:  # decoded to the end: now the count is known
        _position(opts.start, fps, seen, "--start")
        _position(opts.end, fps, seen, "--end")
    if not picked:
        end = seen if b is None else b
        raise usage(f"--start/--end: nothing selected (frames {a} to {end} of {count or seen})")
    return Source(np.stack(picked), fps / every, a / fps, len(picked) * every / fps, path)


def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def _job_key(src: Source, s: Settings, opts: Options, spec) -> str:
    stamp = src.path.stat()
    d = {"input": [str(src.path.resolve()), stamp.st_size, stamp.st_mtime_ns], "settings": s.to_dict(),
         "options": {k: v for k, v in asdict(opts).items() if k not in ("resume", "restart", "report", "audio")},
         "models": [str(r.path) for r in spec.refs() if r.path]}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_work(out: Path, key: str, opts: Options, say) -> Path:
    """The work folder: reused with resume (same job only), refused without it, cleared on restart."""
    wd = work_dir(out)
    state = wd / "state.json"
    if wd.exists():
        if opts.restart or not state.exists():
            shutil.rmtree(wd)
        elif not opts.resume:
            raise usage(f"{wd}: an interrupted restyle of this output is there; pass --resume to continue it "
                        "or --restart to start over")
        elif json.loads(state.read_text()).get("key") != key:
            raise usage(f"{wd}: holds a restyle with other input or settings; pass --restart to start over")
        else:
            say(f"resuming from {wd}")
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "frames").mkdir(exist_ok=True)
    if not state.exists():
        state.write_text(json.dumps({"key": key}))
    return wd


def _save(path: Path, write) -> None:
    with replacing(path, path.suffix, "write the work folder") as tmp:
        write(tmp)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    _save(path, lambda p: Image.fromarray(image).save(p, format="PNG"))


def strengths(rows) -> list[float]:
    return [float(r.params["strength"]) for r in rows]


def frames_mode(models, s: Settings, src: Source, rows, opts: Options, wd: Path, controls,
                quiet: bool = True) -> np.ndarray:
    """Per-frame img2img in order; each finished frame is saved to the work folder as it completes."""
    import torch
    from tqdm import tqdm

    from . import img2img
    from .text import conditioning

    sty = img2img.Stylizer(models, steps=s.steps, guidance=1.0, seed=s.seed, negative_prompt=s.negative_prompt,
                           fixed_noise=opts.fixed_noise)
    with torch.inference_mode():
        cond, uncond, guidance = conditioning(models, s, rows)
    power = strengths(rows)
    out, prev_lat = [], None
    # finished frames are saved by a writer thread while the next frame is denoised; on any
    # exit, Ctrl-C included, the writes already queued complete before the work folder is left
    with ThreadPoolExecutor(max_workers=1) as saver:
        for i in tqdm(range(len(src.frames)), desc="restyle", disable=quiet, leave=False):
            prev_lat = _frames_step(i, sty, src, opts, wd, out, prev_lat, cond, uncond, guidance, power, controls,
                                    saver)
    return np.stack(out)


def _frames_step(i, sty, src, opts, wd, out, prev_lat, cond, uncond, guidance, power, controls, saver):
    """Stylize frame i (or take it from the work folder); returns its latents for the next frame."""
    import torch

    from ..output import flow

    png, npy = wd / "frames" / f"{i:06d}.png", wd / "frames" / f"{i:06d}.npy"
    if png.exists() and (opts.blend == 0 or opts.blend_space != "latent" or npy.exists()):
        out.append(read_image(png))
        return torch.from_numpy(np.load(npy)) if npy.exists() else None
    image, init = src.frames[i], None
    if opts.blend > 0 and i > 0:
        back = flow.flow(src.frames[i], src.frames[i - 1]) if opts.flow else None
        if opts.blend_space == "pixel":
            prev = flow.warp(out[-1], back) if back is not None else out[-1]
            image = ((1 - opts.blend) * image + opts.blend * prev).round().astype(np.uint8)
        else:
            with torch.inference_mode():
                own = sty.encode(image)
            p = prev_lat if back is None else _warp_latents(prev_lat, back)
            init = (1 - opts.blend) * own + opts.blend * p.to(own)
    sty.guidance = guidance[i]
    frame = sty(image, (cond[i:i + 1], None if uncond is None else uncond[i:i + 1]), power[i], index=i,
                init_latents=init, controls=[(c, i) for c in controls])
    if opts.blend > 0 and opts.blend_space == "latent":  # before the PNG: a PNG means the frame is complete
        lat = frame.latents.float().cpu().numpy()
        saver.submit(_save, npy, lambda p: _write_npy(p, lat))
    saver.submit(_save_png, png, frame.image)
    out.append(frame.image)
    return frame.latents


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _warp_latents(lat, back: np.ndarray):
    """Latents (1, C, h, w) moved along a pixel-space flow scaled down to the latent grid."""
    import cv2
    import torch

    _, c, h, w = lat.shape
    H, W = back.shape[:2]
    f = cv2.resize(back, (w, h), interpolation=cv2.INTER_AREA) * np.array([w / W, h / H], np.float32)
    from ..output.flow import warp

    arr = lat[0].permute(1, 2, 0).float().cpu().numpy()
    moved = warp(np.ascontiguousarray(arr), f)
    moved = moved[..., None] if moved.ndim == 2 else moved
    return torch.from_numpy(moved).permute(2, 0, 1)[None].to(lat.dtype)


def animatediff_mode(models, s: Settings, src: Source, rows, opts: Options, wd: Path, controls,
                     quiet: bool = True, say=print) -> np.ndarray:
    """Noise the clip's latents to the strength, denoise with the motion module over context windows."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from . import img2img
    from .decode import decode
    from .decode import encode as vae_encode
    from .ipadapter import prepare as prepare_ip
    from .text import conditioning
    from .text2video import denoise

    power = strengths(rows)
    strength = max(power)
    if strength <= 0:
        return src.frames.copy()
    if min(power) != strength:
        say(f"note: animatediff mode uses one strength for the clip: {strength:g} (the largest in the schedule)")
    pipe = models.pipe
    sched = pipe.scheduler
    length = img2img.schedule_length(sched, s.steps, strength)
    ckpt = wd / "latents.pt"
    with torch.inference_mode():
        cond, uncond, guidance = conditioning(models, s, rows)
        ip = prepare_ip(models, s, rows, uncond is not None)
        generator = torch.Generator("cpu").manual_seed(s.seed)
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)
            latents, done = state["latents"], int(state["step"]) + 1
            generator.set_state(state["generator"])
        else:
            x = torch.from_numpy(src.frames).permute(0, 3, 1, 2).to(models.spec.device, pipe.vae.dtype) / 127.5 - 1
            parts = []
            f = pipe.vae_scale_factor
            for k in range(0, len(x), 16):  # diffusers' chunks and draw order, so a seed means the same
                chunk = x[k:k + 16]
                shape = (len(chunk), pipe.unet.config.in_channels, chunk.shape[2] // f, chunk.shape[3] // f)
                # drawn for TAESD too (which has no distribution): the same seed, the same later noise
                eps = randn_tensor(shape, generator=generator, device=x.device, dtype=chunk.dtype)
                parts.append(vae_encode(pipe.vae, chunk, eps))
            lat = torch.cat(parts).permute(1, 0, 2, 3)[None].to(cond.dtype)
            sched.set_timesteps(length, device=models.spec.device)
            t0 = sched.timesteps[-s.steps:][:1]
            noise = randn_tensor(lat.permute(0, 2, 1, 3, 4).shape, generator=generator, device=lat.device,
                                 dtype=lat.dtype).permute(0, 2, 1, 3, 4)
            latents, done = sched.add_noise(lat, noise, t0), 0

        def keep(step, lat, gen):
            state = {"latents": lat.contiguous(), "step": torch.tensor(step - (length - s.steps)),
                     "generator": gen.get_state()}
            _save(ckpt, lambda p: torch.save(state, p))

        if done < s.steps:
            latents = denoise(models, cond, uncond, guidance, s, quiet, rows, controls,
                                     start=(latents, generator, length, done), on_step=keep, ip=ip)
        return decode(pipe.vae, latents, quiet)


def settings_for(models, s: Settings, src: Source) -> Settings:
    """`s` resolved for this input: its frame count and size, a seed."""
    from dataclasses import replace

    from .text2video import resolve_settings

    return resolve_settings(replace(s, frames=len(src.frames), height=src.frames.shape[1],
                                    width=src.frames.shape[2]), models)


def restyle(models, s: Settings, src: Source, opts: Options, out: Path, quiet: bool = True,
            say=print) -> np.ndarray:
    """Restyled frames of `src`, resumable through the work folder beside `out`; `s` as
    settings_for returns it."""
    import torch

    from ..schedule import plan
    from .control import prepare_controls

    if opts.mode not in MODES:
        raise usage(f"--mode: {opts.mode!r}; expected one of {', '.join(MODES)}")
    from . import img2img
    from .decode import check_encoder

    check_encoder(models.pipe.vae)
    if opts.mode == "frames" and s.ip_adapter is not None:
        raise usage("ip_adapter: restyle's frames mode runs the image UNet, which takes no IP-Adapter here; "
                    "use --mode animatediff")
    if opts.mode == "frames":
        img2img.unet2d(models)  # refuses unfused LoRAs (--no-fuse, lcm_map) before the work folder exists
    rows = plan(s)
    with torch.inference_mode():  # before the work folder: errors leave nothing
        controls = prepare_controls(models, s, rows, input_frames=src.frames)
    wd = prepare_work(out, _job_key(src, s, opts, models.spec), opts, say)
    if opts.mode == "frames":
        return frames_mode(models, s, src, rows, opts, wd, controls, quiet)
    return animatediff_mode(models, s, src, rows, opts, wd, controls, quiet, say)


def has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError):
        return False


def mux_audio(video_file: Path, source: Path, start_s: float, duration_s: float, out: Path) -> None:
    """Copy the source's audio for the selected span next to the video stream, into `out`."""
    import subprocess

    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(video_file),
           "-ss", f"{start_s:.3f}", "-t", f"{duration_s:.3f}", "-i", str(source),
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest",
           "-movflags", "+faststart", "-f", "mp4", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise runtime(f"{source}: could not copy its audio ({r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}); "
                      "pass --no-audio to leave it out")
