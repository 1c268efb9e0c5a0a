"""VAE decoding to frames: a few frames at a time, to uint8 RGB (T, H, W, 3); and encoding frames.

The VAE is the base model's own, the one `--vae` names, or TAESD (AutoencoderTiny), which decodes
the same latents several times faster."""

from __future__ import annotations

import numpy as np

from ..errors import usage

CHUNK = 8  # frames per VAE call at most
# The decoder's last blocks hold several (frames, 128, H, W) float tensors at once: the largest of a
# render. Frames per call are chosen so that they stay under this many bytes (1 frame at 512x512).
DECODE_BYTES = 1 << 30
ACTIVATIONS = 128 * 4 * 5  # channels x float32 bytes x tensors alive, per output pixel


def chunk_for(height: int, width: int) -> int:
    """Frames per VAE call at this size: CHUNK for small frames, down to one for large ones."""
    return max(1, min(CHUNK, DECODE_BYTES // (height * width * ACTIVATIONS)))


def to_uint8(images) -> np.ndarray:
    """VAE output (N, 3, H, W) in [-1, 1] -> uint8 RGB (N, H, W, 3) on the CPU."""
    import torch

    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def is_tiny(vae) -> bool:
    """TAESD (diffusers' AutoencoderTiny): latents in, pixels out, no distribution, scaling factor 1."""
    return hasattr(vae, "latent_magnitude")


def check_encoder(vae) -> None:
    """Refuse, before any work, a VAE that cannot encode frames (TAESD's decoder given alone)."""
    if is_tiny(vae) and getattr(vae, "encoder", None) is None:
        raise usage("--vae: TAESD's decoder alone decodes only; restyle, live and --init-image encode frames too: "
                    "put taesd_encoder.pth (or .safetensors) beside taesd_decoder.pth")


def encode(vae, pixels, eps=None):
    """Scaled latents of pixels (N, 3, H, W) in [-1, 1]: the VAE's mean plus `eps` times its std
    (the mean without `eps`); TAESD's latents as they are (it has no distribution)."""
    if is_tiny(vae):
        check_encoder(vae)
        return vae.encode(pixels).latents * vae.config.scaling_factor
    dist = vae.encode(pixels).latent_dist
    z = dist.mean if eps is None else dist.mean + dist.std * eps
    return z * vae.config.scaling_factor


def decode_frames(vae, latents) -> np.ndarray:
    """(N, C, h, w) latents, still scaled by the VAE's scaling factor -> uint8 (N, H, W, 3)."""
    return to_uint8(vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample)


def decode(vae, latents, quiet: bool = True, chunk: int | None = None) -> np.ndarray:
    """(1, C, T, h, w) clip latents -> uint8 (T, H, W, 3), `chunk` frames per VAE call (by default
    as many as the frame size allows, chunk_for)."""
    from tqdm import tqdm

    b, c, t, h, w = latents.shape
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    chunk = chunk or chunk_for(h * f, w * f)
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    return np.concatenate([decode_frames(vae, flat[i:i + chunk])
                           for i in tqdm(range(0, t, chunk), desc="decode", disable=quiet, leave=False)])
