"""Text-to-video: AnimateDiff + LCM over a loaded model set."""

from __future__ import annotations

import random

import numpy as np

from .errors import runtime, usage
from .models import Models
from .schedule import Settings


def resolve_settings(s: Settings, models: Models) -> Settings:
    """Fill what the file left open: the model's native size and a seed."""
    size = models.native_size
    s.width = s.width or size
    s.height = s.height or size
    if s.seed is None:
        s.seed = random.randrange(2**31)
    if s.frames > models.max_frames:
        raise usage(f"frames: {s.frames} is more than the motion module's {models.max_frames}-frame window")
    return s


def render(models: Models, s: Settings, quiet: bool = True) -> np.ndarray:
    """Denoise and decode one clip: uint8 frames (T, H, W, 3)."""
    import torch
    from tqdm import tqdm

    s = resolve_settings(s, models)
    pipe = models.pipe
    pipe.set_progress_bar_config(disable=quiet, desc="denoise", leave=False)
    device = models.spec.device
    cfg = s.guidance > 1.0
    prompt = s.keyframes[0]
    try:
        with torch.inference_mode():
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt, device, 1, cfg, s.negative_prompt or None)
            latents = pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds if cfg else None,
                num_frames=s.frames, height=s.height, width=s.width,
                num_inference_steps=s.steps, guidance_scale=s.guidance,
                generator=torch.Generator("cpu").manual_seed(s.seed),
                output_type="latent",
            ).frames
            return decode(pipe, latents, quiet)
    except torch.OutOfMemoryError:
        raise runtime(f"out of memory rendering {s.frames} frames at {s.width}x{s.height} on {device}; "
                      "try fewer frames or a smaller size") from None


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
