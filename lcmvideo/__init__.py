"""lcmvideo: short videos from Stable Diffusion 1.5 + AnimateDiff + LCM-LoRA, offline."""

__version__ = "0.1.0"
