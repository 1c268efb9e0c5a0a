"""LCM (or TCD) img2img of single frames on a loaded model set, shared by `restyle --mode frames` and `live`.

The motion UNet's image layers are viewed as a plain `UNet2DConditionModel` (the same
tensors, no copy), so per-frame work skips the motion modules. The loop below computes what
`StableDiffusionImg2ImgPipeline.from_pipe(...)` computes with one generator per frame (a
test holds them equal); it is written out so that the noise, the encoded prompts and the
timesteps are prepared once per clip instead of once per frame.

Steps mean steps actually run: with strength s, the LCM schedule for `steps / s` steps is
cut to its last `steps` (diffusers' `enforce_inference_steps=True` rule), so 4 steps at
strength 0.5 run 4 UNet passes, not 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import usage
from .decode import check_encoder, decode_frames
from .decode import encode as vae_encode
from .denoise import denoiser, sample, step_options
from .text import encode, n_chunks, text_options


def unet2d(models):
    """The motion UNet's 2D layers as a UNet2DConditionModel sharing its tensors (built once)."""
    if "unet2d" in models.views:
        return models.views["unet2d"]
    import torch
    from diffusers import UNet2DConditionModel

    if models.adapters:
        raise usage("--no-fuse / travelling LoRA weights / models.lcm_map: per-frame img2img needs the LoRAs "
                    "fused; drop --no-fuse and lcm_map, and keep LoRA weights constant (or restyle with "
                    "--mode animatediff)")
    motion = models.pipe.unet
    with torch.device("meta"):
        view = UNet2DConditionModel.from_config(models.unet2d_config)
    # fused LoRAs keep their peft adapters (for a Session to unfuse them): the merged weight is the base layer's
    own = {k.replace(".base_layer.", "."): v for k, v in motion.state_dict().items() if ".lora_" not in k}
    view.load_state_dict({k: own[k] for k in view.state_dict()}, strict=True, assign=True)
    view.eval().requires_grad_(False)
    models.views["unet2d"] = view
    return view


def img2img_pipeline(models):
    """diffusers' own img2img pipeline on the loaded weights (from_pipe: nothing is read again)."""
    if "img2img" not in models.views:
        from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline

        # the VAE passed on by name: from_pipe drops one that is not an AutoencoderKL (TAESD)
        pipe = StableDiffusionImg2ImgPipeline.from_pipe(
            models.pipe, unet=unet2d(models), vae=models.pipe.vae,
            scheduler=LCMScheduler.from_config(models.pipe.scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        models.views["img2img"] = pipe
    return models.views["img2img"]


def schedule_length(scheduler, steps: int, strength: float) -> int:
    """How many steps the schedule has whose last `steps` start at `strength` of the noise."""
    return min(max(steps, int(steps / strength)), scheduler.config.original_inference_steps)


@dataclass
class Frame:
    """One stylized frame: pixels and the latents they were decoded from."""

    image: np.ndarray  # (H, W, 3) uint8
    latents: object  # (1, 4, h, w) torch tensor, before the VAE's scaling is undone


class Stylizer:
    """Turns frames into stylized frames with fixed settings; prompts are encoded once each."""

    def __init__(self, models, *, steps: int = 4, guidance: float = 1.0, seed: int = 0,
                 negative_prompt: str = "", fixed_noise: bool = True):
        self.models = models
        pipe = img2img_pipeline(models)
        self.unet, self.vae = pipe.unet, pipe.vae  # the VAE: the base's, --vae's, or TAESD
        check_encoder(self.vae)
        # the model set's sampler (LCM or TCD, models.sampler), with its settings
        self.scheduler = type(models.pipe.scheduler).from_config(models.pipe.scheduler.config)
        self.device, self.dtype = models.spec.device, self.unet.dtype
        self.steps, self.guidance, self.seed = steps, guidance, seed
        self.negative_prompt = negative_prompt
        self.fixed_noise = fixed_noise  # the same noise for every frame: the strongest flicker cure
        self.encodes = 0  # text-encoder runs, for tests and the live summary
        self._text: dict = {}
        self._noise: dict = {}  # latent shape -> fixed draws (see _draws)

    def embeddings(self, prompt: str):
        """(cond, uncond or None) for a prompt; encoded on first use only."""
        cfg = self.guidance > 1.0
        key = (prompt, self.negative_prompt if cfg else None)
        if key not in self._text:
            import torch

            te, tok = self.models.pipe.text_encoder, self.models.pipe.tokenizer
            texts = [prompt, self.negative_prompt] if cfg else [prompt]
            opts = text_options(self.models)
            chunks = max(n_chunks(tok, t, opts["embeddings"], opts["searched"]) for t in texts)
            with torch.inference_mode():
                enc = [encode(te, tok, t, chunks, **opts).to(self.dtype) for t in texts]
            self.encodes += 1
            self._text[key] = (enc[0], enc[1] if cfg else None)
        return self._text[key]

    def generator(self, index: int = 0):
        import torch

        return torch.Generator("cpu").manual_seed(self.seed if self.fixed_noise else self.seed + index)

    def _draws(self, image_shape, index: int):
        """(VAE-sample noise, start noise, generator for the steps), drawn in the img2img pipeline's
        order; with fixed noise they are the same every frame, so they are drawn once."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        f = self.models.pipe.vae_scale_factor
        shape = (1, self.vae.config.latent_channels, image_shape[0] // f, image_shape[1] // f)
        if not (self.fixed_noise and shape in self._noise):
            g = self.generator(index)
            eps = randn_tensor(shape, generator=g, device=torch.device(self.device), dtype=self.vae.dtype)
            noise = randn_tensor(shape, generator=g, device=torch.device(self.device), dtype=self.dtype)
            self._noise[shape] = (eps, noise, g.get_state())
        eps, noise, state = self._noise[shape]
        g = torch.Generator("cpu")
        g.set_state(state)
        return eps, noise, g

    def _encode(self, image: np.ndarray, eps):
        return vae_encode(self.vae, self._pixels(image), eps)

    def _pixels(self, image: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None]
        return x.to(self.vae.dtype) / 127.5 - 1.0

    def encode(self, image: np.ndarray):
        """VAE latents (1, 4, h, w) of a uint8 frame: the distribution's mean, no noise."""
        return vae_encode(self.vae, self._pixels(image))

    def decode(self, latents) -> np.ndarray:
        return decode_frames(self.vae, latents)[0]

    def __call__(self, image: np.ndarray, prompt: str | tuple, strength: float, index: int = 0,
                 init_latents=None, controls=()) -> Frame:
        """Stylize one (H, W, 3) uint8 frame. `prompt` is a text or (cond, uncond) embeddings;
        `init_latents` replaces the frame's own encoding (latent blending); `controls` are
        (denoise.Control, frame index) pairs."""
        import torch

        with torch.inference_mode():
            cond, uncond = self.embeddings(prompt) if isinstance(prompt, str) else prompt
            eps, noise, g = self._draws(image.shape, index)
            lat = self._encode(image, eps) if init_latents is None else init_latents
            if strength <= 0:  # nothing to change: the frame itself, exactly
                return Frame(np.ascontiguousarray(image), lat)
            sched = self.scheduler
            # the full schedule, whose last step adds no noise
            sched.set_timesteps(schedule_length(sched, self.steps, strength), device=self.device)
            run = min(self.steps, len(sched.timesteps))
            first = len(sched.timesteps) - run
            lat = sched.add_noise(lat, noise.to(lat.dtype), sched.timesteps[first:first + 1])
            model = denoiser(self.unet, sched, cond, uncond, self.guidance, [c.frame(i) for c, i in controls], run)
            lat = sample(model, sched, lat, g, first, step_kw=step_options(sched, self.models.spec.gamma))
            return Frame(self.decode(lat), lat)


@dataclass
class Flight:
    """A frame inside the stream batch: its latents after `stage` of the run steps."""

    stage: int
    latents: object  # (1, 4, h, w)
    tag: object  # the caller's (live: the captured item)
    controls: list  # denoise.Control of this frame alone


@dataclass
class StreamResult:
    done: list  # (tag, Frame) that left the batch this call, oldest first
    discarded: list  # tags of frames in flight that a change of strength, steps, seed or size threw away


class StreamBatch:
    """StreamDiffusion's denoising batch on a Stylizer's model and settings.

    A frame enters at the first of the run timesteps. Every call runs ONE UNet batch holding the
    newest frame at step 0 and the frames before it at steps 1..n-1, each at its own timestep, through
    the shared `denoise.denoiser`; the frame that took its last step leaves, decoded. With n steps a
    frame costs one batched UNet call instead of n sequential ones, and leaves n - 1 calls after it
    entered. The noise is the Stylizer's (fixed noise: the start noise, then one draw per step in
    the scheduler's order), so each frame comes out as `Stylizer(frame)` would make it (tested).

    `decode` turns latents (N, 4, h, w) into uint8 frames (N, H, W, 3): by default the Stylizer's
    VAE, which is TAESD where the model set has it (`--vae`); another decoder can plug in here.
    The batch's per-frame step is LCM's; TCD (models.sampler) is refused."""

    def __init__(self, stylizer: Stylizer, decode=None):
        from diffusers import LCMScheduler

        if not isinstance(stylizer.scheduler, LCMScheduler):
            raise usage(f"--stream-batch: runs the LCM sampler's steps; the model set samples with "
                        f"{type(stylizer.scheduler).__name__} (sampler: lcm, or drop --stream-batch)")
        self.sty = stylizer
        self.decode = decode or (lambda lat: decode_frames(stylizer.vae, lat))
        self.scheduler = LCMScheduler.from_config(stylizer.scheduler.config)
        self.flight: list[Flight] = []
        self._key = None

    @property
    def steps(self) -> int:
        return self.sty.steps

    @property
    def encodes(self) -> int:
        return self.sty.encodes

    def configure(self, steps: int | None = None, seed: int | None = None):
        """Change steps or seed; frames in flight are discarded at the next call."""
        if steps is not None:
            self.sty.steps = steps
        if seed is not None and seed != self.sty.seed:
            self.sty.seed = seed
            self.sty._noise.clear()

    def pending(self) -> int:
        return len(self.flight)

    def _setup(self, shape, strength: float) -> list:
        """Timesteps, per-step coefficients and noise for these settings; returns discarded tags."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        sty = self.sty
        key = (tuple(shape), float(strength), sty.steps, sty.seed)
        if key == self._key:
            return []
        discarded = [f.tag for f in reversed(self.flight)]  # oldest first
        self.flight, self._key = [], key
        sched, dev = self.scheduler, sty.device
        sched.set_timesteps(schedule_length(sched, sty.steps, strength), device=dev)
        run = min(sty.steps, len(sched.timesteps))
        first = len(sched.timesteps) - run
        self.first, self.run, self.ts = first, run, sched.timesteps[first:]
        eps, noise, g = sty._draws(shape, 0)
        self.eps, self.noise = eps, noise
        lat_shape = noise.shape
        # the scheduler draws fresh noise at every step but the schedule's last, in this order
        self.step_noise = [randn_tensor(lat_shape, generator=g, device=torch.device(dev), dtype=sty.dtype)
                           for _ in range(run - 1)]
        a = sched.alphas_cumprod.to(dev, torch.float32)
        self.a = a[self.ts.long()]
        scal = [sched.get_scalings_for_boundary_condition_discrete(t) for t in self.ts]
        self.c_skip = torch.stack([torch.as_tensor(s, dtype=torch.float32) for s, _ in scal]).to(dev)
        self.c_out = torch.stack([torch.as_tensor(o, dtype=torch.float32) for _, o in scal]).to(dev)
        return discarded

    def push(self, image: np.ndarray, prompt, strength: float, tag=None, controls=()) -> StreamResult:
        """Add a frame and run one batch; `prompt` (a text or (cond, uncond)) holds for the whole batch."""
        import torch

        with torch.inference_mode():
            discarded = self._setup(image.shape, strength)
            lat = self.sty._encode(image, self.eps)
            if strength <= 0:
                return StreamResult([(tag, Frame(np.ascontiguousarray(image), lat))], discarded)
            x = self.scheduler.add_noise(lat, self.noise.to(lat.dtype), self.ts[:1])
            self.flight.insert(0, Flight(0, x, tag, [c.frame(i) for c, i in controls]))
            return StreamResult(self._step(prompt), discarded)

    def advance(self, prompt) -> StreamResult:
        """Run one batch without a new frame (the input stalled): the frames in flight move on."""
        import torch

        if not self.flight:
            return StreamResult([], [])
        with torch.inference_mode():
            return StreamResult(self._step(prompt), [])

    def _step(self, prompt) -> list:
        import torch

        from .denoise import Control

        sty, fl = self.sty, self.flight
        cond, uncond = sty.embeddings(prompt) if isinstance(prompt, str) else prompt
        n = len(fl)
        stage = torch.tensor([f.stage for f in fl], device=self.ts.device)
        x = torch.cat([f.latents for f in fl])
        controls = [Control(parts[0].net, torch.cat([p.images for p in parts]), torch.cat([p.scale for p in parts]),
                            parts[0].start, parts[0].end)
                    for parts in zip(*[f.controls for f in fl])]
        model = denoiser(sty.unet, self.scheduler, cond.expand(n, -1, -1),
                         None if uncond is None else uncond.expand(n, -1, -1), sty.guidance, controls, self.run)
        t = self.ts[stage]
        # one timestep per UNet batch item: with CFG predict doubles the batch, so t goes twice
        out = model(x, t if uncond is None else t.repeat(2), self.first).float()
        xf, view = x.float(), (-1, 1, 1, 1)
        a = self.a[stage].view(view)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            x0 = (xf - (1 - a).sqrt() * out) / a.sqrt()
        elif kind == "v_prediction":
            x0 = a.sqrt() * xf - (1 - a).sqrt() * out
        else:
            x0 = out
        if self.scheduler.config.thresholding:
            x0 = self.scheduler._threshold_sample(x0)
        elif self.scheduler.config.clip_sample:
            r = self.scheduler.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        denoised = (self.c_out[stage].view(view) * x0 + self.c_skip[stage].view(view) * xf).to(x.dtype)
        done, keep = [], []
        for i, f in enumerate(fl):
            if f.stage == self.run - 1:
                done.append((f.tag, denoised[i:i + 1]))
                continue
            nxt = self.a[f.stage + 1]
            f.latents = (nxt.sqrt() * denoised[i:i + 1].float()
                         + (1 - nxt).sqrt() * self.step_noise[f.stage].float()).to(x.dtype)
            f.stage += 1
            keep.append(f)
        self.flight = keep
        if not done:
            return []
        done.reverse()  # oldest first
        images = self.decode(torch.cat([lat for _, lat in done]))
        return [(tag, Frame(img, lat)) for (tag, lat), img in zip(done, images)]
