"""Shared frame noise: frames start from (and LCM re-noises them with) partly common noise."""

import json

import numpy as np
import pytest
import torch
from conftest import render_settings

from lcmvideo import schedule
from lcmvideo.errors import LcmvideoError
from lcmvideo.pipeline import denoise, text2video


def test_frame_noise_shares_the_asked_variance():
    shape = (1, 4, 16, 32, 32)
    x = denoise.frame_noise(shape, 0.6, torch.Generator().manual_seed(0), "cpu", torch.float32)
    flat = x[0].permute(1, 0, 2, 3).reshape(16, -1)
    corr = np.corrcoef(flat.numpy())[np.triu_indices(16, 1)]
    assert abs(corr.mean() - 0.6) < 0.05 and abs(flat.var().item() - 1.0) < 0.05
    # no sharing draws exactly what independent noise always drew, so old seeds keep their clips
    from diffusers.utils.torch_utils import randn_tensor

    own = randn_tensor(shape, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert torch.equal(denoise.frame_noise(shape, 0.0, torch.Generator().manual_seed(0), "cpu", torch.float32), own)


def steadiness(frames):
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def test_shared_noise_steadies_the_frames(tiny_models):
    loose = text2video.render(tiny_models, render_settings(frames=8, steps=4, shared_noise=0.0))
    steady = text2video.render(tiny_models, render_settings(frames=8, steps=4, shared_noise=0.95))
    again = text2video.render(tiny_models, render_settings(frames=8, steps=4, shared_noise=0.95))
    assert np.array_equal(steady, again)  # still deterministic under the seed
    assert steadiness(steady) < 0.5 * steadiness(loose), (steadiness(steady), steadiness(loose))


def test_unset_shared_noise_takes_the_models_default(tiny_models):
    s = text2video.resolve_settings(render_settings(), tiny_models)
    assert s.shared_noise == tiny_models.shared_noise
    assert 0.0 <= s.shared_noise <= 1.0


def test_controlnet_clips_draw_independent_noise_unless_asked(tiny_models, monkeypatch):
    from lcmvideo.schedule import ControlSpec

    monkeypatch.setattr(tiny_models, "shared_noise", 0.5)
    assert text2video.resolve_settings(render_settings(), tiny_models).shared_noise == 0.5
    controlled = render_settings(controlnet=[ControlSpec(images="maps")])
    assert text2video.resolve_settings(controlled, tiny_models).shared_noise == 0.0
    asked = render_settings(controlnet=[ControlSpec(images="maps")], shared_noise=0.3)
    assert text2video.resolve_settings(asked, tiny_models).shared_noise == 0.3


@pytest.mark.parametrize("value", ["1.5", "-0.1", "lots"])
def test_shared_noise_out_of_range_is_a_clear_error(value):
    with pytest.raises(LcmvideoError, match=r"t\.yaml: shared_noise \(line 2\): (must be at|expected a number from 0)"):
        schedule.from_text(f"prompt: a\nshared_noise: {value}\n", "t.yaml")


def test_shared_noise_flag_reaches_the_sidecar(tmp_path):
    from click.testing import CliRunner

    from lcmvideo.cli import cli

    out = tmp_path / "a.mp4"
    r = CliRunner().invoke(cli, ["-q", "render", "--prompt", "x", "--frames", "4", "--steps", "1", "--seed", "3",
                                 "--shared-noise", "0.4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.mp4.json").read_text())["settings"]["shared_noise"] == 0.4
    r = CliRunner().invoke(cli, ["render", "--prompt", "x", "--shared-noise", "2", "-o", str(tmp_path / "b.mp4")])
    assert r.exit_code == 2 and "--shared-noise" in r.output and not (tmp_path / "b.mp4").exists()


def test_the_embedded_family_brings_its_own_default(tiny_dir):
    from lcmvideo import models
    from lcmvideo.schedule import ModelPaths

    f = tiny_dir / "sampling.json"
    f.write_text(json.dumps({"shared_noise": 0.5}))
    try:
        own = models.load(models.resolve(ModelPaths()))
        other = models.load(models.resolve(ModelPaths(motion=str(tiny_dir / "motion_adapter"))))
    finally:
        f.unlink()
    assert own.shared_noise == 0.5
    assert other.shared_noise == 0.0  # a motion module named by the user samples as trained: independently
