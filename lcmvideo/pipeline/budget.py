"""Work that cannot fit is refused before anything is allocated; running out of memory during the
work is named as such, with what to try.

The estimate is a lower bound of the working memory beyond the weights: a few top-level UNet
activations for the frames of one UNet call, and one VAE decode call. It refuses only work that
cannot fit even on an empty device (a typo like --width 51200); what fits in between is left to
the device, whose out-of-memory error becomes the one line of `out_of_memory`.
"""

from __future__ import annotations

import os

from ..errors import runtime, usage
from .decode import ACTIVATIONS, chunk_for
from .denoise import BATCH_FRAMES

UNET_ALIVE = 8  # (frames, channels, h, w) tensors alive at once at the UNet's top level
ADVICE = "try --dtype float16, a smaller --width/--height, fewer frames or a shorter --context-length"


def device_bytes(device: str) -> int | None:
    """The device's whole memory (RAM for the CPU); None where it cannot be told."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    if device == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def working_bytes(frames: int, context: int, width: int, height: int, cfg: bool, channels: int = 320,
                  dtype_bytes: int = 4) -> int:
    """A lower bound of a clip's working memory beyond the weights."""
    per_call = min(frames, max(BATCH_FRAMES, context) if frames > context else frames)
    unet = per_call * (2 if cfg else 1) * (height // 8) * (width // 8) * channels * dtype_bytes * UNET_ALIVE
    vae = chunk_for(height, width) * height * width * ACTIVATIONS
    return max(unet, vae)


def check(frames: int, context: int, width: int, height: int, cfg: bool, device: str, channels: int = 320,
          dtype_bytes: int = 4) -> None:
    """A usage error (exit 2) naming what the work needs and what the device has, if it cannot fit."""
    need = working_bytes(frames, context, width, height, cfg, channels, dtype_bytes)
    have = device_bytes(device)
    if have is not None and need > have:
        raise usage(f"--width/--height: {width}x{height} with {frames} frames needs at least {need / 2**30:,.1f} GiB "
                    f"of working memory; {device} has {have / 2**30:,.1f} GiB in all; use a smaller size or fewer frames")


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or (isinstance(e, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "not enough memory", "DefaultCPUAllocator", "out of memory")))


def out_of_memory(what: str = "", device: str = ""):
    """The one-line runtime error (exit 1) for an out-of-memory during `what` on `device`."""
    where = "".join(f" {x}" for x in (what, device and f"on {device}") if x)
    return runtime(f"out of memory{where}; {ADVICE}")
