"""A clip from a picture (img2vid): the clip's starting latents hold the picture, less and less
over the frames, so that frame 0 looks like it and the motion module moves away from it.

sd-webui-animatediff's init latent: the picture's VAE latent is mixed into frame i with a weight
1 - i^power / scale, the rest random noise, and sampling skips the first part of the denoising
(A1111's denoising strength). Here one number, `init_strength` S, sets both:

- S of the denoising is skipped: sampling starts `1 - S` of the way into the noise (A1111's
  denoising strength 1 - S; S = 0 from pure noise, as text-to-video), over the last `steps` of a
  longer LCM schedule (img2img's rule);
- the picture's latent, noised to that first timestep (with noise common to the frames), is mixed
  into frame i's own starting noise with weight w_i = max(0, 1 - (1 - S) * 2i / (T - 1)):
  1 at frame 0, falling linearly over the clip to 2S - 1 at the last frame (reaching 0 earlier
  where S < 0.5: halfway at S = 0), 1 everywhere at S = 1 (every frame starts from the picture).

The mix is variance-preserving (sqrt(w) z_t + sqrt(1 - w) n: the weights of the two independent
noises' amplitudes), where sd-webui-animatediff mixes linearly in clean latent space before
noising; mixing noised latents linearly would shrink the noise the sampler expects.
S = 0 is text-to-video exactly: nothing of the picture is read into the latents.

With SparseCtrl RGB (`models.sparsectrl`, AnimateDiff v3's v3_sd15_sparsectrl_rgb) the picture
conditions the clip through it instead: its VAE latent is the condition of frame 0 (the mask 1
there, 0 elsewhere), as diffusers' AnimateDiffSparseControlNetPipeline has it, and the SparseCtrl's
residuals join the ControlNets' in the denoiser (`sparsectrl_scale` their weight). S then defaults to
0: the clip starts from pure noise and the condition carries the picture (an S given still mixes
the picture into the starting latents as above).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import usage


def read_picture(path: str) -> np.ndarray:
    """The init image as uint8 RGB; a usage error (exit 2) naming init_image when missing or unreadable."""
    from ..output.images import read_image

    p = Path(path).expanduser()
    if not p.is_file():
        raise usage(f"init_image (--init-image): {path}: no such image file")
    try:
        return read_image(p)
    except Exception as e:  # noqa: BLE001 - read_image's own message, with the setting named
        raise usage(f"init_image (--init-image): {getattr(e, 'message', e)}") from None


def picture(s) -> np.ndarray:
    """The init image fitted to the clip's size by `s.init_fit` (crop, pad or stretch)."""
    from ..output.images import fit

    return fit(read_picture(s.init_image), s.width, s.height, s.init_fit)


def uses_picture(s) -> bool:
    """Whether a render reads the picture: into the starting latents, or as SparseCtrl's condition."""
    from ..schedule import init_strength_of, uses_sparsectrl

    return bool(s.init_image) and (init_strength_of(s) > 0 or uses_sparsectrl(s))


def check_sparsectrl(s) -> None:
    """SparseCtrl conditions on the init image: without one it is refused (before any model loads)."""
    from ..models.locate import sparsectrl_flag
    from ..schedule import uses_sparsectrl

    if uses_sparsectrl(s) and not s.init_image:
        flag = sparsectrl_flag(s.sources.get("sparsectrl", "schedule"))
        raise usage(f"{flag}: SparseCtrl RGB conditions the clip on a picture; give it one with "
                    f"{'--init-image IMAGE' if flag.startswith('--') else 'init_image'}")


def sparse_control(models, s, image: np.ndarray | None):
    """SparseCtrl RGB's control for the clip (denoise.SparseControl), or None without SparseCtrl or
    at sparsectrl_scale 0 (which is no SparseCtrl). The picture's VAE latent (the mean) is frame 0's
    condition; every other frame's condition and mask are zeros."""
    from ..schedule import uses_sparsectrl

    if not uses_sparsectrl(s):
        return None
    check_sparsectrl(s)
    import torch

    from ..models import discover
    from ..models.locate import resolve_sparsectrl
    from .decode import encode
    from .denoise import SparseControl

    spec = models.spec
    ref = spec.sparsectrl
    if ref is None or ref.given != s.models.sparsectrl:
        ref = resolve_sparsectrl(s.models.sparsectrl, spec.models_dir,
                                 discover(spec.models_dir) if spec.models_dir else {},
                                 s.sources.get("sparsectrl", "schedule"))
    net = models.sparsectrl(ref)
    if s.sparsectrl_scale == 0:
        return None
    vae, unet = models.pipe.vae, models.pipe.unet
    device, dtype = spec.device, unet.dtype
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(device, vae.dtype) / 127.5 - 1
    z = encode(vae, x).to(dtype)  # (1, C, h, w): the VAE's mean
    cond = torch.zeros((1, z.shape[1], s.frames, *z.shape[2:]), device=device, dtype=dtype)
    mask = torch.zeros((1, 1, s.frames, *z.shape[2:]), device=device, dtype=dtype)
    cond[:, :, 0], mask[:, :, 0] = z, 1
    return SparseControl(net, cond, mask, s.sparsectrl_scale)


def start_fraction(strength: float) -> float:
    """How far into the noise sampling starts (1 = pure noise)."""
    return max(1 - strength, 0.02)  # 1: the last steps of LCM's longest schedule


def weights(frames: int, strength: float) -> list[float]:
    """The picture's share of each frame's starting latents."""
    if frames == 1:
        return [1.0]
    return [max(0.0, 1 - (1 - strength) * 2 * i / (frames - 1)) for i in range(frames)]


def start_latents(vae, scheduler, image: np.ndarray, noise, strength: float, steps: int, generator):
    """(latents, schedule length): the clip's starting latents (1, C, T, h, w) over `noise` (the
    frames' own, already scaled) and the length of the LCM schedule whose last `steps` run. Sets
    the scheduler's timesteps."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from .decode import encode
    from .img2img import schedule_length

    device, dtype = noise.device, noise.dtype
    length = schedule_length(scheduler, steps, start_fraction(strength))
    scheduler.set_timesteps(length, device=device)
    t0 = scheduler.timesteps[length - steps]
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(device, vae.dtype) / 127.5 - 1
    z0 = encode(vae, x).to(dtype)[:, :, None]  # (1, C, 1, h, w): the VAE's mean, no randomness
    eps = randn_tensor(z0.shape, generator=generator, device=device, dtype=dtype)
    z_t = scheduler.add_noise(z0, eps, t0.view(1))
    w = torch.tensor(weights(noise.shape[2], strength), device=device, dtype=dtype).view(1, 1, -1, 1, 1)
    return w.sqrt() * z_t + (1 - w).sqrt() * noise, length
