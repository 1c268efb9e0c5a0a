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

INITS = ["uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
         "xavier_normal_", "orthogonal_", "constant_", "zeros_", "ones_"]


@pytest.fixture
def real_inits(monkeypatch):
    """Records every initialisation of a real (not meta) tensor: torch.nn.init's and Tensor's own
    (loading must initialise nothing at random: tests/test_memory.py, tests/test_vae.py)."""
    import torch

    seen = []

    def spy(owner, name):
        real = getattr(owner, name)

        def recorded(*a, **k):
            t = a[0] if a else k.get("self", k.get("tensor"))
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                seen.append((name, tuple(t.shape)))
            return real(*a, **k)

        monkeypatch.setattr(owner, name, recorded)

    for name in INITS:
        spy(torch.nn.init, name)
    for name in ("normal_", "uniform_"):
        spy(torch.Tensor, name)
    return seen


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


@pytest.fixture(scope="module")
def shapes_family():
    """The module's embedded default is the trained shapes family, as a user gets it (this file picks
    the twin). Opt in per module: `pytestmark = pytest.mark.usefixtures("shapes_family")`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCMVIDEO_EMBEDDED", "shapes")
        yield


@pytest.fixture(scope="module")
def session(shapes_family):
    """A Session on the shapes family, one per module (a module may define its own `session`)."""
    from lcmvideo.api import Session

    return Session()


def render_settings(**kw):
    from lcmvideo.schedule import Settings

    s = Settings(keyframes={0: kw.pop("prompt", "a red circle")}, frames=kw.pop("frames", 8),
                 steps=kw.pop("steps", 2), seed=kw.pop("seed", 1))
    for k, v in kw.items():
        setattr(s, k, v)
    return s
