"""Where lcmvideo keeps its cache and finds its package data."""

import os
from pathlib import Path

DATA = Path(__file__).parent / "data"


def cache_dir() -> Path:
    """`LCMVIDEO_CACHE`, else the platform's user cache dir (e.g. ~/.cache/lcmvideo)."""
    env = os.environ.get("LCMVIDEO_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lcmvideo", appauthor=False))
