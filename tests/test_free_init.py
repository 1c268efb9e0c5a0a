"""FreeInit: the filters and the re-initialisation as diffusers computes them, through the one
sampler loop with context windows and ControlNet, from the schedule, the flags and the API."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import render_settings

from lcmvideo import schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.pipeline import freeinit, text2video
from lcmvideo.schedule import ControlSpec, FreeInit


@pytest.mark.parametrize("filter", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("shape, spatial, temporal, order",
                         [((1, 4, 16, 8, 8), 0.25, 0.25, 4), ((1, 4, 7, 9, 12), 0.4, 0.1, 2)])
def test_filters_equal_diffusers(filter, shape, spatial, temporal, order):
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    # the mixin's methods use nothing of the pipeline: called unbound, they are the reference
    ref = FreeInitMixin._get_free_init_freq_filter(None, shape, "cpu", filter, order, spatial, temporal)
    ours = freeinit.low_pass(shape, filter, spatial, temporal, order)
    assert ours.shape == ref.shape and torch.equal(ours, ref)
    x, noise = torch.randn(shape, generator=torch.Generator().manual_seed(1)), torch.randn(shape)
    assert torch.allclose(freeinit.mix(x, noise, ours), FreeInitMixin._apply_freq_filter(None, x, noise, ref),
                          atol=1e-6)


def test_box_filter_and_the_mix_keep_what_they_should():
    """The official repository's box: ones on a centred block of round(H//2 * d_s) each side."""
    m = freeinit.low_pass((1, 1, 16, 8, 8), "box", 0.25, 0.5)
    assert m.sum() == 8 * 2 * 2 and m[0, 0, 4:12, 3:5, 3:5].eq(1).all()
    x = torch.randn(1, 4, 16, 8, 8)
    # an all-pass mask gives x back, an all-stop one the noise
    assert torch.allclose(freeinit.mix(x, torch.randn_like(x), torch.ones_like(x)), x, atol=1e-5)
    noise = torch.randn_like(x)
    assert torch.allclose(freeinit.mix(x, noise, torch.zeros_like(x)), noise, atol=1e-5)
    assert freeinit.low_pass((1, 1, 4, 4, 4), "gaussian", 0.0, 0.25).eq(0).all()


@pytest.mark.parametrize("filter", ["butterworth", "gaussian"])
def test_render_equals_diffusers_enable_free_init(tiny_models, filter):
    from diffusers import AnimateDiffPipeline

    s = render_settings(frames=8, steps=3, seed=5)
    s.shared_noise = 0.0
    s.free_init = FreeInit(iterations=2, filter=filter, spatial_stop=0.3, temporal_stop=0.2)
    ours = text2video.render(tiny_models, s)
    pipe = AnimateDiffPipeline(**tiny_models.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_init(num_iters=2, method=filter, spatial_stop_frequency=0.3, temporal_stop_frequency=0.2)
    with torch.inference_mode():
        ref = pipe(prompt="a red circle", num_frames=8, num_inference_steps=3, guidance_scale=1.0,
                   generator=torch.Generator("cpu").manual_seed(5), output_type="np").frames[0]
    assert np.abs(ours.astype(int) - (np.asarray(ref) * 255).round()).max() <= 1
    s.free_init = None
    assert np.abs(ours.astype(int) - text2video.render(tiny_models, s)).mean() > 1


class Calls:
    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, *a):
        self.n += 1


def test_windows_and_controlnet_run_once_per_iteration(tiny_models, tmp_path):
    from PIL import Image

    from lcmvideo.models import resolve_controlnet

    img = np.zeros((64, 64, 3), np.uint8)
    img[8:24, 8:24] = 255
    Image.fromarray(img).save(tmp_path / "c.png")
    s = render_settings(frames=12, steps=2, seed=3)
    s.context.length, s.context.overlap = 8, 4  # two windows
    s.controlnet = [ControlSpec(images=str(tmp_path / "c.png"))]
    net = tiny_models.controlnet(resolve_controlnet(None, tiny_models.spec, "controlnet[0].model"))
    counts = []
    for free_init in (None, FreeInit(iterations=3, filter="box")):
        s.free_init = free_init
        spies = Calls(tiny_models.pipe.unet), Calls(net)
        frames = text2video.render(tiny_models, s)
        for spy in spies:
            spy.handle.remove()
        counts.append((spies[0].n, spies[1].n, frames))
    (u1, c1, plain), (u3, c3, on) = counts
    assert u1 > 0 and c1 > 0 and (u3, c3) == (3 * u1, 3 * c1)
    assert on.shape == plain.shape == (12, 64, 64, 3)
    assert np.array_equal(on, text2video.render(tiny_models, s))  # a seed means the same clip
    assert np.abs(on.astype(int) - plain).mean() > 1


def test_schedule_flags_and_errors(tmp_path):
    s = schedule.from_text("prompt: x\nfree_init: 2\n")
    assert s.free_init == FreeInit(iterations=2)
    s = schedule.from_text("prompt: x\nfree_init: {iterations: 3, filter: ideal, spatial_stop: 0.5, order: 2}\n")
    assert (s.free_init.filter, s.free_init.spatial_stop, s.free_init.order) == ("ideal", 0.5, 2)
    assert schedule.from_text("prompt: x\nfree_init: true\n").free_init == FreeInit()
    assert schedule.from_text("prompt: x\nfree_init: 1\n").free_init is None  # one run is plain sampling
    assert schedule.from_source(s, free_init=1).free_init is None
    over = schedule.from_source(s, free_init_filter="gaussian")
    assert (over.free_init.iterations, over.free_init.filter) == (3, "gaussian")
    for text, msg in [("free_init: {filter: sharp}", r"free_init.filter \(line 2\): expected one of gaussian, "
                                                     r"butterworth, ideal, box, got 'sharp'"),
                      ("free_init: {iterations: 0}", r"free_init.iterations \(line 2\): expected a whole number"),
                      ("free_init: {spatial: 1}", r"free_init.spatial \(line 2\): unknown key"),
                      ("free_init: fast", r"free_init \(line 2\): expected a number of iterations")]:
        with pytest.raises(LcmvideoError, match=msg):
            schedule.from_text(f"prompt: x\n{text}\n")
    with pytest.raises(LcmvideoError, match="--free-init-filter: expected one of"):
        schedule.from_source(None, prompt="x", free_init_filter="sharp")


def test_cli_flag_reaches_the_clip_and_the_sidecar(tmp_path):
    out, plain = tmp_path / "f.mp4", tmp_path / "p.mp4"
    base = ["-q", "render", "-p", "a red circle", "--frames", "4", "--steps", "2", "--seed", "2"]
    r = CliRunner().invoke(cli, [*base, "--free-init", "2", "--free-init-filter", "gaussian", "-o", str(out)])
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".mp4.json").read_text())
    assert side["settings"]["free_init"] == {"iterations": 2, "filter": "gaussian", "spatial_stop": 0.25,
                                             "temporal_stop": 0.25, "order": 4}
    again = tmp_path / "again.mp4"
    r = CliRunner().invoke(cli, ["-q", "render", str(out.with_suffix(".mp4.json")), "-o", str(again)])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(cli, [*base, "-o", str(plain)]).exit_code == 0
    from lcmvideo.output import video

    a, b, c = (video.read(p)[0] for p in (out, again, plain))
    assert np.array_equal(a, b) and np.abs(a.astype(int) - c).mean() > 1
    r = CliRunner().invoke(cli, [*base, "--free-init", "11", "-o", str(tmp_path / "x.mp4")])
    assert r.exit_code == 2 and "--free-init" in r.output and "Traceback" not in r.output


def test_fresh_noise_is_shared_as_the_first_runs_was(tiny_models):
    """With all of the noise common to the frames (shared_noise 1), a clip alike in every frame stays
    so after re-initialisation; with none, fresh noise makes the frames differ."""
    sched = tiny_models.pipe.scheduler
    sched.set_timesteps(2)
    result = torch.randn(1, 4, 1, 8, 8).expand(1, 4, 6, 8, 8).clone()
    common = torch.randn(1, 4, 1, 8, 8).expand(1, 4, 6, 8, 8).clone()
    spread = lambda x: (x - x[:, :, :1]).abs().max().item()  # noqa: E731
    for share, alike in ((1.0, True), (0.0, False)):
        out = freeinit.reinit(result, common, sched, sched.timesteps[0], FreeInit(), torch.Generator().manual_seed(0),
                              share)
        assert out.shape == result.shape and (spread(out) < 1e-4) == alike
