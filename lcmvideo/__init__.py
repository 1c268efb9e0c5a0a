"""lcmvideo: short videos from Stable Diffusion 1.5 + AnimateDiff + LCM-LoRA, offline."""

from .version import __version__

__all__ = ["Session", "__version__", "load_schedule"]


def __getattr__(name):
    # the API without importing it (or torch) on `import lcmvideo`
    if name == "Session":
        from .api import Session

        return Session
    if name == "load_schedule":
        from .schedule import load

        return load
    raise AttributeError(name)
