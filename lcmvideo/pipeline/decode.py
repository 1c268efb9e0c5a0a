"""VAE decoding to frames: a few frames at a time, to uint8 RGB (T, H, W, 3)."""

from __future__ import annotations

import numpy as np

CHUNK = 8  # frames per VAE call: the decoder's activations are the largest tensors of a render


def to_uint8(images) -> np.ndarray:
    """VAE output (N, 3, H, W) in [-1, 1] -> uint8 RGB (N, H, W, 3) on the CPU."""
    import torch

    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def decode_frames(vae, latents) -> np.ndarray:
    """(N, C, h, w) latents, still scaled by the VAE's scaling factor -> uint8 (N, H, W, 3)."""
    return to_uint8(vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample)


def decode(vae, latents, quiet: bool = True, chunk: int = CHUNK) -> np.ndarray:
    """(1, C, T, h, w) clip latents -> uint8 (T, H, W, 3), `chunk` frames per VAE call."""
    from tqdm import tqdm

    b, c, t, h, w = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    return np.concatenate([decode_frames(vae, flat[i:i + chunk])
                           for i in tqdm(range(0, t, chunk), desc="decode", disable=quiet, leave=False)])
