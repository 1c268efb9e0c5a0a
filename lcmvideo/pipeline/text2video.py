"""Text-to-video: AnimateDiff + LCM (or TCD) over a loaded model set.

The loop is written out rather than taken from `AnimateDiffPipeline.__call__` so that every
frame can have its own text embedding (prompt travel) and guidance, and so that clips longer
than the motion module's window run as overlapping context windows (denoise.denoiser). With
one window and one prompt it computes exactly what the diffusers pipeline computes (tested).
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from ..models import ipadapter
from ..schedule import FrameRow, Settings, finish, init_strength_of, plan, windows
from . import img2vid
from .budget import is_out_of_memory, out_of_memory
from .control import prepare_controls
from .decode import decode
from .denoise import denoiser, frame_noise, sample, set_motion_scale, step_options
from .ipadapter import prepare as prepare_ip
from .text import conditioning


def resolve_settings(s: Settings, models) -> Settings:
    """A copy of `s` with what it left open filled in: the model's native size, a seed, shared noise,
    init_strength (0 with SparseCtrl, 0.7 without)."""
    s = finish(s)
    size = models.native_size
    # A ControlNet's maps hold the frames together by themselves; common noise would pull a
    # subject the maps move back to one place (the embedded family: see docs/shapes.md).
    return replace(s, width=s.width or size, height=s.height or size,
                   seed=random.randrange(2**31) if s.seed is None else s.seed, init_strength=init_strength_of(s),
                   shared_noise=(0.0 if s.controlnet else models.shared_noise) if s.shared_noise is None
                   else s.shared_noise)


def denoise(models, cond, uncond, guidance, s: Settings, quiet: bool = True, rows=None, controls=None, start=None,
            on_step=None, ip=None, picture=None):
    """LCM sampling of (1, C, T, h, w) latents; cond/uncond are per-frame embeddings (T, L, D);
    `s` has been through resolve_settings.

    `start` = (latents, generator, schedule_length, first_step) continues from given noisy
    latents (video-to-video, resume) over the last steps of a longer LCM schedule;
    `picture` (uint8 (H, W, 3) at the clip's size) starts the clip from it by `s.init_strength`
    (img2vid); `s.free_init` runs the sampler again from the result's low frequencies (FreeInit;
    not with `start`). `on_step(step, latents, generator)` sees the latents after each step; `ip`
    (ipadapter.IpCond) is an IP-Adapter's conditioning, its adapter installed while this runs."""
    import torch
    from tqdm import tqdm

    from . import freeinit

    pipe = models.pipe
    unet, sched = pipe.unet, pipe.scheduler
    device = models.spec.device
    share = s.shared_noise
    runs = s.free_init.iterations if s.free_init is not None and start is None else 1
    if start is None:
        generator = torch.Generator("cpu").manual_seed(s.seed)
        shape = (1, unet.config.in_channels, s.frames, s.height // pipe.vae_scale_factor,
                 s.width // pipe.vae_scale_factor)
        noise = frame_noise(shape, share, generator, device, cond.dtype) * sched.init_noise_sigma
        length = s.steps
        if picture is not None and s.init_strength > 0:
            latents, length = img2vid.start_latents(pipe.vae, sched, picture, noise, s.init_strength, s.steps,
                                                    generator)
        else:
            latents = noise
            sched.set_timesteps(length, device=device)
        first = length - s.steps
    else:
        latents, generator, length, first = start
        sched.set_timesteps(length, device=device)  # the full schedule: its last step adds no noise
        first += length - s.steps
    wins = windows(s.frames, min(s.context.length, models.max_frames), s.context.overlap, s.loop)
    travel = lora_travel(models, rows) if rows else None
    motion = [r.params.get("motion_scale", s.motion_scale) for r in rows] if rows else [s.motion_scale]
    moving = max(motion) != min(motion)  # travelling: the scale is set per frame of each window
    set_motion_scale(unet, None if moving else motion[0])

    ramp = models.spec.lcm_map if "lcm_lora_scale" in models.adapters else None
    run0 = len(sched.timesteps) - s.steps  # the steps run are the schedule's last s.steps
    factor = {"lcm": 1.0}  # the LCM-LoRA's scale at the current step, lcm_map's

    def before_step(step):
        factor["lcm"] = ramp.scale(step - run0, s.steps)
        if travel is None:  # the loaded set's weights for every window (as fused): set once per step
            set_lora_weights(models, lora_curves(models, None), [0], factor["lcm"])

    ip_travels = ip is not None and max(ip.scales) != min(ip.scales)
    if ip is not None:
        ipadapter.set_scale(ip.adapter, ip.scales[0])

    def before_window(win):
        if travel:
            set_lora_weights(models, travel, win, factor["lcm"])
        if ip_travels:  # per window, as LoRA weights: the processors take one scale per call
            ipadapter.set_scale(ip.adapter, sum(ip.scales[i] for i in win) / len(win))
        if moving:
            set_motion_scale(unet, torch.tensor([motion[i] for i in win]))

    per_window = bool(travel) or ip_travels or moving
    bar = tqdm(total=(len(sched.timesteps) - first) * len(wins) * runs, desc="denoise", disable=quiet, leave=False)
    model = denoiser(unet, sched, cond, uncond, guidance, controls or (), s.steps, wins,
                     before_window=before_window if per_window else None, per_call=1 if per_window else None,
                     progress=bar.update, ip=ip)

    def renoise(out, latents):
        # LCM re-noises its estimate for the next step with independent noise, TCD (gamma > 0) its
        # estimate carried part of the way back; share that noise too
        if sched.step_index >= len(sched.timesteps):
            return latents
        nxt = sched.timesteps[sched.step_index]
        if getattr(out, "denoised", None) is not None:
            a = sched.alphas_cumprod[nxt].to(device, latents.dtype)
            return a.sqrt() * out.denoised + (1 - a).sqrt() * frame_noise(latents.shape, share, generator, device,
                                                                          latents.dtype)
        if getattr(out, "pred_noised_sample", None) is not None and models.spec.gamma > 0:
            s_t = int((1 - models.spec.gamma) * int(nxt))
            r = (sched.alphas_cumprod[nxt] / sched.alphas_cumprod[s_t]).to(device, latents.dtype)
            return r.sqrt() * out.pred_noised_sample + (1 - r).sqrt() * frame_noise(
                latents.shape, share, generator, device, latents.dtype)
        return latents

    try:
        with ipadapter.installed(unet, ip and ip.adapter):
            for run in range(runs):
                if run:  # FreeInit: the result back to the first timestep, its low frequencies kept
                    latents = freeinit.reinit(latents, noise, sched, sched.timesteps[first], s.free_init, generator,
                                              share)
                    sched.set_timesteps(length, device=device)
                latents = sample(model, sched, latents, generator, first, renoise if share > 0 else None, on_step,
                                 before_step=before_step if ramp is not None else None,
                                 step_kw=step_options(sched, models.spec.gamma))
    finally:
        set_motion_scale(unet, None)  # the loaded set is shared (a Session, img2img's 2D view)
        bar.close()
    return latents


def lora_curves(models, rows: list[FrameRow] | None) -> dict:
    """Per-frame weight of each loaded adapter (adapter name -> weights)."""
    spec = models.spec
    fixed = {"lcm_lora_scale": spec.lcm_lora_scale,
             **{f"lora:{r.key}": r.weight for r in [*spec.loras, *spec.motion_loras]}}
    return {name: [r.params.get(param, fixed.get(param, 0.0)) for r in rows] if rows else [fixed.get(param, 0.0)]
            for param, name in models.adapters.items()}


def lora_travel(models, rows: list[FrameRow]) -> dict | None:
    """Per-frame weights of each loaded adapter, if any of them changes over the clip."""
    if not models.adapters:
        return None
    curves = lora_curves(models, rows)
    if all(max(c) == min(c) for c in curves.values()):
        return None
    return curves


def set_lora_weights(models, curves: dict, win: list[int], lcm_factor: float = 1.0):
    """LoRA weights can change per window, not per frame: each window gets its frames' mean (the
    LCM-LoRA's times `lcm_factor`, lcm_map's scale at this step)."""
    names = list(curves)
    lcm = models.adapters.get("lcm_lora_scale")
    models.pipe.set_adapters(names, adapter_weights=[sum(curves[n][i] for i in win) / len(win)
                                                     * (lcm_factor if n == lcm else 1.0) for n in names])


def render(models, s: Settings, quiet: bool = True, cache: dict | None = None, timing: dict | None = None) -> np.ndarray:
    """Denoise and decode one clip: uint8 frames (T, H, W, 3). `s` as resolve_settings returns it
    (it is resolved here otherwise, with a random seed if it has none); `cache` (a Session's) keeps
    encoded prompts and conditioning images between renders; `timing` gets the seconds of each phase."""
    import time

    import torch

    s = resolve_settings(s, models)
    rows = plan(s)
    timing = {} if timing is None else timing
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            cond, uncond, guidance = conditioning(models, s, rows, cache)
            controls = prepare_controls(models, s, rows, cache)
            ip = prepare_ip(models, s, rows, uncond is not None, cache)
            picture = img2vid.picture(s) if img2vid.uses_picture(s) else None
            sparse = img2vid.sparse_control(models, s, picture)
            latents = denoise(models, cond, uncond, guidance, s, quiet, rows, controls + ([sparse] if sparse else []),
                              ip=ip, picture=picture)
            t1 = time.perf_counter()
            frames = decode(models.pipe.vae, latents, quiet)
            timing.update(denoise=t1 - t0, decode=time.perf_counter() - t1)
            return frames
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or is_out_of_memory(e):
            raise out_of_memory(f"rendering {s.frames} frames at {s.width}x{s.height}", models.spec.device) from None
        raise
