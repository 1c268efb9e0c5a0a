"""lcmvideo: short videos from Stable Diffusion 1.5 + AnimateDiff + LCM-LoRA, offline."""

__version__ = "0.1.0"


def __getattr__(name):
    # the API without importing it (or torch) on `import lcmvideo`
    if name == "Session":
        from .api import Session

        return Session
    if name == "load_schedule":
        from .schedule import load

        return load
    raise AttributeError(name)
