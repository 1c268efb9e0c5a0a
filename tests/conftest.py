import os
import tempfile

# Before anything imports lcmvideo: a private cache (the tiny family is built once per
# session) and no hub, as on a user's offline machine.
_CACHE = tempfile.mkdtemp(prefix="lcmvideo-test-cache-")
os.environ["LCMVIDEO_CACHE"] = _CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
# The plumbing tests run on the random twin: they compare layouts and code paths, not meaning,
# and its LoRA is the peft layout they convert from. tests/test_shapes.py opts into the trained family.
os.environ["LCMVIDEO_EMBEDDED"] = "random"
for var in ("LCMVIDEO_MODEL", "LCMVIDEO_MOTION", "LCMVIDEO_LCM_LORA", "LCMVIDEO_MODELS_DIR", "LCMVIDEO_DEVICE"):
    os.environ.pop(var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir():
    from lcmvideo.models import embedded

    return embedded.ensure()


@pytest.fixture(scope="session")
def tiny_models(tiny_dir):
    """The embedded default, loaded once for the session."""
    from lcmvideo import models
    from lcmvideo.schedule import ModelPaths

    return models.load(models.resolve(ModelPaths()))


def render_settings(**kw):
    from lcmvideo.schedule import Settings

    s = Settings(keyframes={0: kw.pop("prompt", "a red circle")}, frames=kw.pop("frames", 8),
                 steps=kw.pop("steps", 2), seed=kw.pop("seed", 1))
    for k, v in kw.items():
        setattr(s, k, v)
    return s
