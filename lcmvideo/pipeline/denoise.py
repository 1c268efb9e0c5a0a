"""The one denoiser every mode calls, and the sampler loop around it.

`denoiser(...)` returns `model(latents, t, step) -> noise`, as k-diffusion's samplers take a
model. For the image UNet the latents are one frame (1, C, h, w) (img2img, restyle's frames
mode, live); for the motion UNet a clip (1, C, T, h, w), run as overlapping context windows,
several windows to one UNet call, their predictions blended with pyramid weights where they
overlap (text-to-video, restyle's animatediff mode). Either way it applies classifier-free
guidance per frame and the ControlNets' residuals within their start/end steps (SparseCtrl's, a
ControlNet with motion modules, per context window: it sees the window's frames together). `sample`
runs an LCM/TCD scheduler's steps over it; noise is drawn by the caller and passed in.

Samplers: LCMScheduler (the LCM-LoRA's own: each step's estimate re-noised with fresh noise) and
TCDScheduler (Trajectory Consistency Distillation's strategic stochastic sampling: the next sample
is the model's own noise estimate carried to a point `gamma` of the way back, then re-noised only
that far; gamma 0 adds no fresh noise). `step_options` gives a scheduler's step arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

BATCH_FRAMES = 32  # context windows run together in one UNet call up to this many frames


@dataclass
class Control:
    """One ControlNet with its conditioning for the whole clip (or the one frame)."""

    net: object  # diffusers ControlNetModel
    images: object  # (T, 3, H, W) float in [0, 1] on the device
    scale: object  # (T,) per-frame conditioning scale (0 where a frame has no image)
    start: float = 0.0
    end: float = 1.0

    def active(self, i: int, steps: int) -> bool:
        """diffusers' control_guidance_start/end rule."""
        return not (i / steps < self.start or (i + 1) / steps > self.end)

    def frame(self, i: int) -> Control:
        """This ControlNet's conditioning of frame i alone."""
        return replace(self, images=self.images[i:i + 1], scale=self.scale[i:i + 1])


@dataclass
class SparseControl:
    """SparseCtrl RGB with its condition for the whole clip: the init image's latent at frame 0 and
    zeros elsewhere, with the mask saying which frames are conditioned (diffusers'
    AnimateDiffSparseControlNetPipeline.prepare_sparse_control_conditioning). A context window is
    given its frames' slices, so a window without frame 0 gets an all-zero condition and mask."""

    net: object  # diffusers SparseControlNetModel
    cond: object  # (1, C, T, h, w) latents
    mask: object  # (1, 1, T, h, w): 1 where a frame is conditioned
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    active = Control.active

    def window(self, idx: list) -> tuple:
        """(net, condition, mask, scale) of windows (frame index tensors) stacked as a batch."""
        import torch

        return (self.net, torch.cat([self.cond[:, :, i] for i in idx]), torch.cat([self.mask[:, :, i] for i in idx]),
                self.scale)


def frame_noise(shape, share: float, generator, device, dtype):
    """Gaussian noise for (1, C, T, h, w) latents, a `share` of its variance common to all frames.

    Frames that start from (and, in LCM's multistep sampling, are re-noised with) partly the
    same noise settle on the same layout; 0 gives independent noise."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    own = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    if share <= 0:
        return own
    common = randn_tensor((*shape[:2], 1, *shape[3:]), generator=generator, device=torch.device(device), dtype=dtype)
    return share**0.5 * common + (1 - share) ** 0.5 * own


def window_weights(n: int):
    """Pyramid weights: a window's edge frames count less where windows overlap."""
    import torch

    ramp = torch.arange(1, n + 1, dtype=torch.float32)
    return torch.minimum(ramp, ramp.flip(0))


def guided(out, cfg: bool, g):
    """Classifier-free guidance over a [uncond, cond] batch (the output itself without CFG)."""
    if not cfg:
        return out
    u, c = out.chunk(2)
    return u + g * (c - u)


def control_residuals(parts, x, t, ehs) -> dict:
    """Summed ControlNet residuals for a flat batch of frames x: parts are (net, images, per-item
    scale), as UNet keyword arguments."""
    down, mid = None, None
    for net, image, scale in parts:
        d, m = net(x, t, encoder_hidden_states=ehs, controlnet_cond=image, conditioning_scale=1.0, return_dict=False)
        sv = scale.view(-1, 1, 1, 1).to(x.dtype)
        d, m = [r * sv for r in d], m * sv
        down = d if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def add_residuals(extra: dict, down, mid) -> dict:
    """More residuals (SparseCtrl's) over the ControlNets' (if any), as UNet keyword arguments."""
    have = extra.get("down_block_additional_residuals")
    if have is not None:
        down, mid = [a + b for a, b in zip(have, down)], extra["mid_block_additional_residual"] + mid
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def predict(unet, x, t, cond, uncond=None, guidance=1.0, controls=(), ip=None, sparse=None):
    """One UNet call: x is frames (n, C, h, w) or windows (n, C, L, h, w); cond/uncond are per-frame
    embeddings (n*L, 77k, D), uncond meaning CFG; guidance a number or per frame (n, 1, L, 1, 1);
    controls are (net, images (n*L, 3, H, W), scales (n*L,)) in the UNet's (batch, frame) order;
    ip is (tokens, uncond tokens) (n*L, 1, k, D) of an installed IP-Adapter, per frame; sparse is
    SparseCtrl's (net, condition (n, C, L, h, w), mask (n, 1, L, h, w), scale) for windows, run on the
    same batch as the UNet (both CFG halves), as diffusers' SparseCtrl pipeline does.

    The IP-Adapter's tokens go in beside the text, as UNetMotionModel passes them on after projecting
    `added_cond_kwargs["image_embeds"]` (which it would repeat per window: here each frame has its own)."""
    import torch

    cfg = uncond is not None
    x_in = torch.cat([x, x]) if cfg else x
    ehs = torch.cat([uncond, cond]) if cfg else cond
    extra = {}
    if controls:
        flat = x_in if x_in.ndim == 4 else x_in.transpose(1, 2).reshape(-1, x_in.shape[1], *x_in.shape[3:])
        extra = control_residuals([(net, torch.cat([im, im]) if cfg else im, torch.cat([sc, sc]) if cfg else sc)
                                   for net, im, sc in controls], flat, t, ehs)
    if sparse is not None:
        net, c, m, scale = sparse
        down, mid = net(x_in, t, encoder_hidden_states=ehs, controlnet_cond=torch.cat([c, c]) if cfg else c,
                        conditioning_mask=torch.cat([m, m]) if cfg else m, conditioning_scale=scale,
                        return_dict=False)
        extra = add_residuals(extra, down, mid)
    states = ehs if ip is None else (ehs, [torch.cat([ip[1], ip[0]]) if cfg else ip[0]])
    return guided(unet(x_in, t, encoder_hidden_states=states, **extra).sample, cfg, guidance)


def denoiser(unet, scheduler, cond, uncond=None, guidance=1.0, controls=(), steps: int = 1, wins=None,
             before_window=None, per_call: int | None = None, progress=None, ip=None):
    """`model(latents, t, step)`: the noise prediction for a frame (wins None) or a clip over the
    context windows `wins`. `step` indexes the scheduler's timesteps; the last `steps` of them are
    the ones run, which the ControlNets' start/end refer to. `guidance` is a number for a frame, one
    per frame for a clip; `before_window(window)` runs before each UNet call (LoRA weights travelling
    per window); `progress(n)` counts windows done; `ip` (pipeline.ipadapter.IpCond) gives each frame
    its IP-Adapter tokens."""
    import torch

    sparse = [c for c in controls if isinstance(c, SparseControl)]
    controls = [c for c in controls if not isinstance(c, SparseControl)]

    def active(step, among=controls):
        k = step - (len(scheduler.timesteps) - steps)
        return [c for c in among if c.active(k, steps)]

    if wins is None:
        def model(x, t, step):
            ctl = [(c.net, c.images, c.scale) for c in active(step)]
            return predict(unet, scheduler.scale_model_input(x, t), t, cond, uncond, guidance, ctl,
                           ip and (ip.cond, ip.uncond))

        return model

    device = cond.device
    cfg = uncond is not None
    g = torch.as_tensor(guidance, dtype=cond.dtype, device=device).view(1, 1, -1, 1, 1)
    per_call = per_call or max(1, BATCH_FRAMES // len(wins[0]))
    groups = [(group, [torch.tensor(win, device=device) for win in group])
              for group in (wins[i:i + per_call] for i in range(0, len(wins), per_call))]

    def model(x, t, step):
        ctl, sp = active(step), active(step, sparse)
        w = window_weights(len(wins[0])).to(device, x.dtype)  # every window has the same length
        noise = torch.zeros_like(x)
        for group, idx in groups:
            if before_window:
                before_window(group[0])
            out = predict(unet, scheduler.scale_model_input(torch.cat([x[:, :, i] for i in idx]), t), t,
                          torch.cat([cond[i] for i in idx]), torch.cat([uncond[i] for i in idx]) if cfg else None,
                          torch.cat([g[:, :, i] for i in idx]) if cfg else g,
                          [(c.net, torch.cat([c.images[i] for i in idx]), torch.cat([c.scale[i] for i in idx]))
                           for c in ctl], ip and ip.frames(torch.cat(idx)), sp[0].window(idx) if sp else None)
            if len(wins) == 1:
                noise = out
            else:
                for k, i in enumerate(idx):
                    noise[:, :, i] += out[k:k + 1] * w.view(1, 1, -1, 1, 1)
            if progress:
                progress(len(group))
        if len(wins) > 1:
            total = torch.zeros(x.shape[2], device=device, dtype=x.dtype)
            for win in wins:
                total[win] += w
            noise /= total.view(1, 1, -1, 1, 1)
        return noise

    return model


def set_motion_scale(unet, scale=None):
    """Multiply the motion modules' residual: each module's output becomes x + scale * (module(x) - x),
    as ComfyUI-AnimateDiff-Evolved's effect_multival blends a module's output with its input. `scale`
    is a number or one per frame of the window (a tensor (L,)); None or 1 leaves the modules alone
    (today's frames exactly), 0 draws every frame by the image UNet alone. Hooks go in on first use."""
    import re

    import torch

    if isinstance(scale, (int, float)) and scale == 1.0:
        scale = None
    if not hasattr(unet, "_motion_scale"):
        if scale is None:
            return
        holder = unet._motion_scale = [None]

        def hook(module, args, kwargs, output):
            s = holder[0]
            if s is None:
                return None
            x = args[0] if args else kwargs["hidden_states"]
            if isinstance(s, torch.Tensor):  # one per frame; the batch is (windows x CFG halves) x frames
                s = s.to(x.device, x.dtype).repeat(x.shape[0] // s.numel()).view(-1, 1, 1, 1)
            return x + s * (output - x)

        for name, module in unet.named_modules():
            if re.search(r"\.motion_modules\.\d+$", name):
                module.register_forward_hook(hook, with_kwargs=True)
    unet._motion_scale[0] = scale


def step_options(scheduler, gamma: float) -> dict:
    """The extra arguments of the scheduler's step: TCD's gamma (diffusers calls it eta)."""
    return {"eta": gamma} if type(scheduler).__name__ == "TCDScheduler" else {}


def sample(model, scheduler, latents, generator, first: int = 0, renoise=None, on_step=None, before_step=None,
           step_kw: dict | None = None):
    """Run the scheduler's timesteps from `first` on (its schedule already set): each step asks
    `model` for the noise and lets the scheduler step (with `step_kw`, step_options'). `before_step(step)`
    runs first (LoRA scales over the steps); `renoise(step_output, latents)` may replace the latents
    after a step; `on_step(step, latents, generator)` sees them (checkpoints)."""
    timesteps = scheduler.timesteps
    if first:
        scheduler.set_begin_index(first)
    for step in range(first, len(timesteps)):
        t = timesteps[step]
        if before_step:
            before_step(step)
        out = scheduler.step(model(latents, t, step), t, latents, generator=generator, **(step_kw or {}))
        latents = out.prev_sample
        if renoise is not None:
            latents = renoise(out, latents)
        if on_step:
            on_step(step, latents, generator)
    # LCM's result is the denoised estimate of the last step; TCD's last step goes to t = 0
    return latents
