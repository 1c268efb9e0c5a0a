"""Measuring the shapes family: prompt following, LCM against its teacher, shared by tests and
benchmarks/shapes_quality.py.

The teacher is the base UNet without the LCM-LoRA, sampled with DDIM and classifier-free
guidance (the distillation's setting); the student is the same UNet with the LCM-LoRA fused,
sampled with LCMScheduler at guidance 1. Both start from the same noise, so their pictures
can be compared one for one.
"""

from __future__ import annotations

import numpy as np

from lcmvideo.shapes import analyse, world

TEACHER_GUIDANCE = 2.5  # 1 + the middle of the distillation's w range
TOLERANCE_PX = 6.0


def prompts_and_truth(seeds_per_prompt: int = 2):
    """Every colour x shape as a prompt, with the colour each picture must have."""
    out = []
    for colour in world.COLOURS:
        for shape in world.SHAPES:
            for k in range(seeds_per_prompt):
                out.append((f"a {colour} {shape}", colour, 1000 * len(out) + k))
    return out


def image_pipeline(models, scheduler: str):
    """A StableDiffusionPipeline over the loaded family's 2D UNet with the named scheduler."""
    from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline, TCDScheduler

    from lcmvideo.pipeline.img2img import unet2d

    cls = {"ddim": DDIMScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler}[scheduler]
    p = models.pipe
    pipe = StableDiffusionPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=unet2d(models),
                                   scheduler=cls.from_config(p.scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> np.ndarray:
    """(N, 64, 64, 3) uint8 pictures, one per (prompt, seed): starting noise and LCM's re-noising
    both come from the seed, so a picture is the same whatever batch it is drawn in."""
    import torch

    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    latents = torch.cat([torch.randn(shape, generator=g) for g in gens])
    with torch.inference_mode():  # the generators go on to LCM's re-noising: per picture, so batching changes nothing
        out = pipe(prompt=prompts, latents=latents, num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="np").images
    return (out * 255).round().astype(np.uint8)


def clip_pipeline(models, scheduler: str):
    """The loaded family's AnimateDiff pipeline with the named scheduler (16-frame clips)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, LCMScheduler, TCDScheduler

    cls = {"ddim": DDIMScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler}[scheduler]
    parts = {**models.pipe.components, "scheduler": cls.from_config(models.pipe.scheduler.config)}
    pipe = AnimateDiffPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_clip(pipe, prompt: str, seed: int, steps: int, guidance: float, frames: int = 16,
                  shared_noise: float = 0.0) -> np.ndarray:
    """(frames, 64, 64, 3) uint8 clip; starting noise (a `shared_noise` share common to all frames) and
    LCM's re-noising come from the seed."""
    import torch

    from lcmvideo.pipeline.denoise import frame_noise

    c = pipe.unet.config
    shape = (1, c.in_channels, frames, c.sample_size, c.sample_size)
    g = torch.Generator().manual_seed(seed)
    latents = frame_noise(shape, shared_noise, g, "cpu", torch.float32)
    with torch.inference_mode():
        out = pipe(prompt=prompt, num_frames=frames, latents=latents, num_inference_steps=steps,
                   guidance_scale=guidance, generator=g, output_type="np").frames[0]
    return (np.asarray(out) * 255).round().astype(np.uint8)


def velocity(reads) -> tuple[float, float] | None:
    """Least-squares (dx, dy) in px/frame of a clip's centroid track; None if the shape is mostly missing."""
    p = np.array([(r.x, r.y) for r in reads], dtype=float)
    ok = ~np.isnan(p).any(axis=1)
    if ok.sum() < len(p) // 2:
        return None
    t = np.arange(len(p))[ok]
    a = np.stack([t, np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(a, p[ok], rcond=None)
    return float(coef[0][0]), float(coef[0][1])


def goes_the_right_way(v: tuple[float, float] | None, motion: str, min_speed: float = 0.8) -> bool:
    """The track follows the motion word: 'still' under 0.4 px/frame, else mostly along its direction."""
    if v is None:
        return False
    dx, dy = world.MOTIONS[motion]
    if (dx, dy) == (0, 0):
        return max(abs(v[0]), abs(v[1])) < 0.4
    along, across = v[0] * dx + v[1] * dy, abs(v[0] * dy - v[1] * dx)
    return along > min_speed and along > 2 * across


def colour_rate(frames: np.ndarray, colours: list[str]) -> float:
    """Share of pictures whose dominant shape colour is the asked one."""
    return float(np.mean([analyse.read(f).colour == c for f, c in zip(frames, colours)]))


def colour_kept(reads: list, prompt: str) -> float:
    """Share of a clip's frames whose shape has the colour its prompt names."""
    want = next(c for c in world.COLOURS if c in prompt.split())
    return float(np.mean([r.colour == want for r in reads]))


def agreement(a: np.ndarray, b: np.ndarray, tol: float = TOLERANCE_PX) -> float:
    """Share of picture pairs with the same colour and centroids within `tol` pixels."""
    hits = []
    for fa, fb in zip(a, b):
        ra, rb = analyse.read(fa), analyse.read(fb)
        hits.append(ra.colour is not None and ra.colour == rb.colour
                    and np.hypot(ra.x - rb.x, ra.y - rb.y) <= tol)
    return float(np.mean(hits))


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference, 0-1."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def motion_lora_deltas(unet, sd: dict, scale: float = 1.0) -> dict:
    """{parameter: scale * up @ down} of a motion LoRA on a diffusers motion UNet, in AnimateDiff's layout
    (keyed as AnimateDiff's own loader reads it, load_diffusers_lora: W += alpha * up @ down) or peft's
    (`unet.<layer>.lora_A.weight` = down, `lora_B` = up, no alpha)."""
    params = dict(unet.named_parameters())
    out = {}
    for key, down in sd.items():
        if key.endswith(".lora_A.weight"):
            up, name = sd[key.replace(".lora_A.", ".lora_B.")], key.removeprefix("unet.").replace(".lora_A.", ".")
        elif ".down." in key:
            up = sd[key.replace(".down.", ".up.")]
            name = key.replace("processor.", "").replace("_lora", "").replace("down.", "").replace("up.", "")
            name = name.replace("to_out.", "to_out.0.").replace("temporal_transformer.", "")
            name = name.replace("attention_blocks.0.", "attn1.").replace("attention_blocks.1.", "attn2.")
        else:
            continue
        out[params[name]] = scale * (up.float() @ down.float()).to(params[name].dtype)
    return out


class motion_lora:
    """Context: the motion LoRA file (AnimateDiff's or peft's layout) added to a loaded family's motion UNet, removed after."""

    def __init__(self, models, path, scale: float = 1.0):
        from safetensors.torch import load_file

        self.deltas = motion_lora_deltas(models.pipe.unet, load_file(path), scale)

    def __enter__(self):
        import torch

        with torch.no_grad():
            for p, d in self.deltas.items():
                p.add_(d)

    def __exit__(self, *exc):
        import torch

        with torch.no_grad():
            for p, d in self.deltas.items():
                p.sub_(d)


MOTION_PROMPTS = ("a white square", "a red circle on a black background", "a blue triangle on a gray background",
                  "a yellow circle", "a green square on a black background")


def motion_tracks(render, prompts=MOTION_PROMPTS, seeds=(1, 2)) -> list:
    """Fitted (dx, dy) px/frame (or None) of 16-frame clips `render(prompt, seed)` for every prompt x seed."""
    return [velocity(analyse.read_clip(render(p, s))) for p in prompts for s in seeds]


def wander(frames: np.ndarray) -> float:
    """Largest distance (px) of the shape's centroid from its first frame's; inf if it goes missing."""
    p = np.array([(r.x, r.y) for r in analyse.read_clip(frames)])
    d = np.hypot(*(p - p[0]).T)
    return float("inf") if np.isnan(d).any() else float(d.max())
