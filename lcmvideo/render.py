"""Text-to-video: AnimateDiff + LCM over a loaded model set.

The denoising loop is written out here rather than taken from `AnimateDiffPipeline.__call__`
so that every frame can have its own text embedding (prompt travel) and guidance, and so
that clips longer than the motion module's window run as overlapping context windows.
With one window and one prompt it computes exactly what the diffusers pipeline computes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .errors import runtime
from .models import Models
from .schedule import FrameRow, Settings, finish, full_prompt, negative_for, plan


def resolve_settings(s: Settings, models: Models) -> Settings:
    """Fill what the file left open: the model's native size and a seed."""
    size = models.native_size
    s.width = s.width or size
    s.height = s.height or size
    if s.seed is None:
        s.seed = random.randrange(2**31)
    if s.shared_noise is None:
        # A ControlNet's maps hold the frames together by themselves; common noise would pull a
        # subject the maps move back to one place (the embedded family: see README, Shared noise).
        s.shared_noise = 0.0 if s.controlnet else models.shared_noise
    return s


def frame_noise(shape, share: float, generator, device, dtype):
    """Gaussian noise for (1, C, T, h, w) latents, a `share` of its variance common to all frames.

    Frames that start from (and, in LCM's multistep sampling, are re-noised with) partly the
    same noise settle on the same layout; 0 gives independent noise, drawn exactly as before."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    own = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    if share <= 0:
        return own
    common = randn_tensor((*shape[:2], 1, *shape[3:]), generator=generator, device=torch.device(device), dtype=dtype)
    return share**0.5 * common + (1 - share) ** 0.5 * own


BATCH_FRAMES = 32  # context windows run together in one UNet call up to this many frames


def windows(frames: int, length: int, overlap: int, loop: bool = False) -> list[list[int]]:
    """Overlapping runs of frame indices covering the clip; the last one ends on the last frame.

    With `loop`, windows wrap around the end so the last frames are denoised next to the first.
    """
    if frames <= length:
        return [list(range(frames))]
    stride = max(1, length - overlap)
    if loop:
        return [[(s + i) % frames for i in range(length)] for s in range(0, frames, stride)]
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    return [list(range(s, s + length)) for s in starts]


def window_weights(n: int):
    """Pyramid weights: a window's edge frames count less where windows overlap."""
    import torch

    ramp = torch.arange(1, n + 1, dtype=torch.float32)
    return torch.minimum(ramp, ramp.flip(0))


def conditioning(models: Models, s: Settings, rows: list[FrameRow], cache: dict | None = None):
    """Per-frame text embeddings (T, L, D) for the prompt and, with CFG, the negative prompt.

    Each distinct keyframe text goes through the text encoder once; frames between keyframes
    blend the keyframes' embeddings (linear or slerp) with the plan's weights.
    """
    import torch

    from . import prompts

    pipe = models.pipe
    kfs = s.resolved
    use_cfg = any(r.params["guidance"] > 1.0 for r in rows)
    texts = [full_prompt(s, k) for k in kfs]
    negs = [negative_for(s, k) for k in kfs] if use_cfg else []
    chunks = max(prompts.n_chunks(pipe.tokenizer, t) for t in texts + negs)
    known = {} if cache is None else cache.setdefault("text", {})  # (text, chunks) -> embedding, kept by a Session
    embeds = {}
    for t in dict.fromkeys(texts + negs):
        if (t, chunks) not in known:
            known[(t, chunks)] = prompts.encode(pipe.text_encoder, pipe.tokenizer, t, chunks)[0]
        embeds[t] = known[(t, chunks)]

    def per_frame(keyed):
        out = []
        for r in rows:
            if len(r.blend) == 1:
                out.append(embeds[keyed[r.blend[0][0]]])
                continue
            (i, wa), (j, wb) = r.blend
            a, b = embeds[keyed[i]], embeds[keyed[j]]
            out.append(prompts.slerp(a, b, wb) if s.interpolation == "slerp" else a * wa + b * wb)
        return torch.stack(out)

    cond = per_frame(texts)
    uncond = per_frame(negs) if use_cfg else None
    guidance = [max(r.params["guidance"], 1.0) for r in rows]
    return cond, uncond, guidance


@dataclass
class Control:
    """One ControlNet with its conditioning for the whole clip."""

    net: object  # diffusers ControlNetModel
    images: object  # (T, 3, H, W) float in [0, 1] on the device
    scale: object  # (T,) per-frame conditioning scale (0 where a frame has no image)
    start: float = 0.0
    end: float = 1.0

    def active(self, i: int, steps: int) -> bool:
        """diffusers' control_guidance_start/end rule."""
        return not (i / steps < self.start or (i + 1) / steps > self.end)


def denoise(models: Models, cond, uncond, guidance, s: Settings, quiet: bool = True, rows=None,
            controls: list[Control] | None = None, start=None, on_step=None):
    """LCM sampling of (1, C, T, h, w) latents; cond/uncond are per-frame embeddings (T, L, D);
    `s` has been through resolve_settings.

    `start` = (latents, generator, schedule_length, first_step) continues from given noisy
    latents (video-to-video, resume) over the last steps of a longer LCM schedule;
    `on_step(step, latents, generator)` sees the latents after each step."""
    import torch
    from tqdm import tqdm

    pipe = models.pipe
    unet, sched = pipe.unet, pipe.scheduler
    device = models.spec.device
    share = s.shared_noise  # resolve_settings filled it, as it did width, height and seed
    if start is None:
        generator = torch.Generator("cpu").manual_seed(s.seed)
        shape = (1, unet.config.in_channels, s.frames, s.height // pipe.vae_scale_factor,
                 s.width // pipe.vae_scale_factor)
        latents = frame_noise(shape, share, generator, device, cond.dtype) * sched.init_noise_sigma
        sched.set_timesteps(s.steps, device=device)
        first = 0
    else:
        latents, generator, length, first = start
        sched.set_timesteps(length, device=device)  # the full schedule: its last step adds no noise
        first += length - s.steps
    wins = windows(s.frames, min(s.context.length, models.max_frames), s.context.overlap, s.loop)
    travel = lora_travel(models, rows) if rows else None
    cfg = uncond is not None
    g = torch.as_tensor(guidance, dtype=cond.dtype, device=device).view(1, 1, -1, 1, 1)
    steps = len(sched.timesteps)
    per_call = 1 if travel else max(1, BATCH_FRAMES // len(wins[0]))
    groups = [(group, [torch.tensor(win, device=device) for win in group]) for group in _groups(wins, per_call)]
    w = window_weights(len(wins[0])).to(device, latents.dtype)  # every window has the same length
    total = torch.zeros(s.frames, device=device, dtype=latents.dtype)
    for win in wins:
        total[win] += w
    bar = tqdm(total=(steps - first) * len(wins), desc="denoise", disable=quiet, leave=False)
    if first:
        sched.set_begin_index(first)
    for step, t in enumerate(sched.timesteps):
        if step < first:
            continue
        active = [c for c in controls or () if c.active(step - (steps - s.steps if start else 0), s.steps)]
        noise = torch.zeros_like(latents)
        for group, idx in groups:
            if travel:
                set_lora_weights(models, travel, group[0])
            x = torch.cat([latents[:, :, i] for i in idx])
            c = torch.cat([cond[i] for i in idx])
            u = torch.cat([uncond[i] for i in idx]) if cfg else None
            gg = torch.cat([g[:, :, i] for i in idx]) if cfg else g
            out = _predict(unet, sched, x, t, c, u, gg, active, idx)
            if len(wins) == 1:
                noise = out
            else:
                for k, i in enumerate(idx):
                    noise[:, :, i] += out[k:k + 1] * w.view(1, 1, -1, 1, 1)
            bar.update(len(group))
        if len(wins) > 1:
            noise /= total.view(1, 1, -1, 1, 1)
        out = sched.step(noise, t, latents, generator=generator)
        latents = out.prev_sample
        if share > 0 and getattr(out, "denoised", None) is not None and sched.step_index < len(sched.timesteps):
            # LCM re-noises its estimate for the next step with independent noise; share it too
            a = sched.alphas_cumprod[sched.timesteps[sched.step_index]].to(device, latents.dtype)
            fresh = frame_noise(latents.shape, share, generator, device, latents.dtype)
            latents = a.sqrt() * out.denoised + (1 - a).sqrt() * fresh
        if on_step:
            on_step(step, latents, generator)
    bar.close()
    # LCM's result is the denoised estimate of the last step
    return latents


def _groups(wins: list, n: int) -> list:
    return [wins[i:i + n] for i in range(0, len(wins), n)]


def _predict(unet, sched, x, t, cond, uncond, g, controls=(), idx=()):
    """Noise prediction for a batch of windows x (n, C, L, h, w), with CFG and ControlNet residuals."""
    import torch

    x_in = torch.cat([x, x]) if uncond is not None else x
    x_in = sched.scale_model_input(x_in, t)
    ehs = torch.cat([uncond, cond]) if uncond is not None else cond
    extra = {}
    if controls:
        # ControlNets see frames as a flat batch, in the UNet's (batch, frame) order
        n, ch, length, h, w = x_in.shape
        flat = x_in.transpose(1, 2).reshape(n * length, ch, h, w)
        parts = []
        for c in controls:
            image = torch.cat([c.images[i] for i in idx])
            scale = torch.cat([c.scale[i] for i in idx])
            if uncond is not None:
                image, scale = torch.cat([image, image]), torch.cat([scale, scale])
            parts.append((c.net, image, scale))
        extra = control_residuals(parts, flat, t, ehs)
    out = unet(x_in, t, encoder_hidden_states=ehs, **extra).sample
    return guided(out, uncond is not None, g)


def control_residuals(parts, x, t, ehs) -> dict:
    """Summed ControlNet residuals for a flat batch x: parts are (net, images, per-item scale),
    as UNet keyword arguments."""
    down, mid = None, None
    for net, image, scale in parts:
        d, m = net(x, t, encoder_hidden_states=ehs, controlnet_cond=image, conditioning_scale=1.0, return_dict=False)
        sv = scale.view(-1, 1, 1, 1).to(x.dtype)
        d, m = [r * sv for r in d], m * sv
        down = d if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def guided(out, cfg: bool, g):
    """Classifier-free guidance over a [uncond, cond] batch (the output itself without CFG)."""
    if not cfg:
        return out
    u, c = out.chunk(2)
    return u + g * (c - u)


def prepare_controls(models: Models, s: Settings, rows: list[FrameRow], cache: dict | None = None,
                     input_frames=None) -> list[Control]:
    """Load each ControlNet (once per path) and its conditioning images for this clip
    (`input_frames`: a restyle's input, for poses of the input itself)."""
    import torch

    from . import control
    from .models import resolve_controlnet

    out = []
    dtype, device = models.pipe.unet.dtype, models.spec.device
    for i, spec in enumerate(s.controlnet):
        ref = resolve_controlnet(spec.model, models.spec, f"controlnet[{i}].model")
        net = models.controlnet(ref)
        key = (repr(spec), s.frames, s.width, s.height, control.stamp(spec))
        known = {} if cache is None else cache.setdefault("control", {})
        if key not in known:
            known[key] = control.load(spec, s.frames, s.width, s.height, input_frames)
        images, present = known[key]
        scale = [spec.scale * r.params["controlnet_scale"] * float(p) for r, p in zip(rows, present)]
        out.append(Control(net, torch.from_numpy(images).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0,
                           torch.tensor(scale, device=device, dtype=dtype), spec.start, spec.end))
    return out


def lora_travel(models: Models, rows: list[FrameRow]) -> dict | None:
    """Per-frame weights of each loaded adapter, if any of them changes over the clip."""
    if not models.adapters:
        return None
    curves = {name: [r.params.get(param, 0.0) for r in rows] for param, name in models.adapters.items()}
    if all(max(c) == min(c) for c in curves.values()):
        return None
    return curves


def set_lora_weights(models: Models, curves: dict, win: list[int]):
    """LoRA weights can change per window, not per frame: each window gets its frames' mean."""
    names = list(curves)
    models.pipe.set_adapters(names, adapter_weights=[sum(curves[n][i] for i in win) / len(win) for n in names])


def render(models: Models, s: Settings, quiet: bool = True, cache: dict | None = None) -> np.ndarray:
    """Denoise and decode one clip: uint8 frames (T, H, W, 3). `cache` (a Session's) keeps
    encoded prompts and conditioning images between renders."""
    import torch

    s = resolve_settings(finish(s), models)
    rows = plan(s)
    device = models.spec.device
    try:
        with torch.inference_mode():
            cond, uncond, guidance = conditioning(models, s, rows, cache)
            controls = prepare_controls(models, s, rows, cache)
            latents = denoise(models, cond, uncond, guidance, s, quiet, rows, controls)
            return decode(models.pipe, latents, quiet)
    except torch.OutOfMemoryError:
        raise runtime(f"out of memory rendering {s.frames} frames at {s.width}x{s.height} on {device}; "
                      "try fewer frames, a smaller size or a shorter context.length") from None


def decode(pipe, latents, quiet: bool = True, chunk: int = 8) -> np.ndarray:
    """VAE-decode (B=1, C, T, h, w) latents in frame chunks, to uint8 (T, H, W, 3)."""
    import torch
    from tqdm import tqdm

    b, c, t, h, w = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / pipe.vae.config.scaling_factor
    out = []
    for i in tqdm(range(0, t, chunk), desc="decode", disable=quiet, leave=False):
        img = pipe.vae.decode(flat[i:i + chunk].to(pipe.vae.dtype)).sample
        out.append(((img.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(out).numpy()
