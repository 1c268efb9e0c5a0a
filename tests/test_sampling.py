"""How text is encoded and clips are sampled: clip skip as diffusers computes it, the TCD sampler as
diffusers' TCDScheduler steps it, and the LCM-LoRA's scale over the steps (lcm_map)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import render_settings

from lcmvideo import models, schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.pipeline import img2img, text, text2video
from lcmvideo.schedule import LcmMap, ModelPaths


@pytest.fixture
def layer_norm_where_diffusers_looks(tiny_models, monkeypatch):
    """diffusers' encode_prompt(clip_skip=) reads text_encoder.text_model.final_layer_norm, a level
    transformers >= 5.6 flattened away; point it at the same module."""
    te = tiny_models.pipe.text_encoder
    if not hasattr(te, "text_model"):
        monkeypatch.setattr(te, "text_model", type("TextModel", (), {"final_layer_norm": te.final_layer_norm})(),
                            raising=False)
    return tiny_models


@pytest.mark.parametrize("a1111, theirs", [(1, None), (2, 1)])
def test_clip_skip_equals_diffusers_encode_prompt(layer_norm_where_diffusers_looks, a1111, theirs):
    m = layer_norm_where_diffusers_looks
    prompt = "a red circle on a black background"
    with torch.inference_mode():
        ours = text.encode(m.pipe.text_encoder, m.pipe.tokenizer, prompt, clip_skip=a1111)
        ref, _ = m.pipe.encode_prompt(prompt, "cpu", 1, False, clip_skip=theirs)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-5)


def test_clip_skip_changes_the_clip_without_a_reload_and_is_checked(tmp_path):
    import lcmvideo

    session = lcmvideo.Session()
    kw = dict(prompt="a red circle", frames=2, steps=1, seed=4)
    one, two = session.render(**kw), session.render(**kw, clip_skip=2)
    assert session.loads == 1 and np.abs(one.astype(int) - two).max() > 2
    assert np.array_equal(session.render(**kw), one)
    with pytest.raises(LcmvideoError, match=r"--clip-skip: 3 is more layers than the text encoder has \(2\)"):
        session.render(**kw, clip_skip=3)
    out = tmp_path / "c.mp4"
    r = CliRunner().invoke(cli, ["-q", "render", "-p", "x", "--frames", "2", "--steps", "1", "--clip-skip", "2",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".mp4.json").read_text())
    assert side["settings"]["models"]["clip_skip"] == 2 and side["models"]["clip_skip"] == 2


@pytest.fixture(scope="module")
def tcd_models(tiny_dir):
    return models.load(models.resolve(ModelPaths(sampler="tcd", gamma=0.3)))


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_tcd_render_equals_diffusers_tcd_scheduler(tcd_models, gamma):
    from diffusers import AnimateDiffPipeline, TCDScheduler

    tcd_models.spec.gamma = gamma
    s = render_settings(frames=8, steps=4, seed=5)
    s.shared_noise = 0.0
    ours = text2video.render(tcd_models, s)
    assert type(tcd_models.pipe.scheduler).__name__ == "TCDScheduler"
    pipe = AnimateDiffPipeline(**{**tcd_models.pipe.components,
                                  "scheduler": TCDScheduler.from_config(tcd_models.pipe.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        ref = pipe(prompt="a red circle", num_frames=8, num_inference_steps=4, guidance_scale=1.0, eta=gamma,
                   generator=torch.Generator("cpu").manual_seed(5), output_type="np").frames[0]
    assert np.abs(ours.astype(int) - (np.asarray(ref) * 255).round()).max() <= 1


def test_tcd_img2img_equals_diffusers_with_tcd(tcd_models):
    from diffusers import StableDiffusionImg2ImgPipeline, TCDScheduler
    from PIL import Image

    from lcmvideo.shapes import world

    tcd_models.spec.gamma = 0.3
    frame = world.clip(world.Scene("circle", "red", "black", 16, 32, 9, "still", 0.0), 1)[0]
    sty = img2img.Stylizer(tcd_models, steps=3, seed=9)
    assert type(sty.scheduler).__name__ == "TCDScheduler"
    ours = sty(frame, "a blue circle", 0.6).image
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(img2img.img2img_pipeline(tcd_models),
                                                    scheduler=TCDScheduler.from_config(sty.scheduler.config))
    ref = pipe(prompt="a blue circle", image=Image.fromarray(frame), strength=0.6, eta=0.3,
               num_inference_steps=img2img.schedule_length(sty.scheduler, 3, 0.6), guidance_scale=1.0,
               generator=torch.Generator().manual_seed(9), output_type="np").images[0]
    assert np.abs(ours.astype(int) - (ref * 255).round()).max() <= 1


def test_sampler_flags_reach_the_scheduler_without_a_reload(tmp_path):
    import lcmvideo

    session = lcmvideo.Session()
    kw = dict(prompt="a red circle", frames=2, steps=2, seed=4)
    lcm = session.render(**kw)
    tcd = session.render(**kw, sampler="tcd", gamma=0.0)
    assert session.loads == 1 and type(session._models.pipe.scheduler).__name__ == "TCDScheduler"
    assert np.abs(lcm.astype(int) - tcd).max() > 2
    r = CliRunner().invoke(cli, ["render", "-p", "x", "--sampler", "euler"])
    assert r.exit_code == 2 and "'euler' is not one of 'lcm', 'tcd'" in r.output
    with pytest.raises(LcmvideoError, match=r"t.yaml: models.gamma \(line 1\): must be at most 1.0"):
        schedule.from_text("models: {sampler: tcd, gamma: 2}", "t.yaml")


def test_lcm_map_scale_follows_prompt_travels_rule():
    ramp = LcmMap(start_scale=0.15, end_scale=0.75, gradient_start=0.2, gradient_end=0.75)
    # progress (step + 1) / total; before 0.2 the start scale, after 0.75 the end scale, linear between
    assert [round(ramp.scale(i, 10), 4) for i in range(10)] == [
        0.15, 0.15, 0.2591, 0.3682, 0.4773, 0.5864, 0.6955, 0.75, 0.75, 0.75]


def test_lcm_map_sets_the_adapter_scale_at_each_step(tiny_dir, monkeypatch):
    ramp = LcmMap(start_scale=0.2, end_scale=1.0, gradient_start=0.0, gradient_end=1.0)
    loaded = models.load(models.resolve(ModelPaths(fuse=False, lcm_map=ramp, lcm_lora_scale=0.5)))
    calls = []
    real = loaded.pipe.set_adapters
    monkeypatch.setattr(loaded.pipe, "set_adapters", lambda names, adapter_weights=None: (
        calls.append(dict(zip(names, adapter_weights))), real(names, adapter_weights=adapter_weights))[1])
    ramped = text2video.render(loaded, render_settings(frames=4, steps=4))
    assert [round(c["lcm"], 6) for c in calls] == [round(0.5 * (0.2 + 0.8 * (k + 1) / 4), 6) for k in range(4)]
    loaded.spec.lcm_map = None
    calls.clear()
    steady = text2video.render(loaded, render_settings(frames=4, steps=4))
    assert calls == [] and np.abs(ramped.astype(int) - steady).max() > 2


def test_lcm_map_with_travelling_lora_weights_sets_both_per_window_and_step(tiny_dir, monkeypatch):
    loaded = models.load(models.resolve(ModelPaths(fuse=False, lcm_map=LcmMap(0.0, 1.0, 0.0, 1.0))))
    calls = []
    real = loaded.pipe.set_adapters
    monkeypatch.setattr(loaded.pipe, "set_adapters", lambda names, adapter_weights=None: (
        calls.append(dict(zip(names, adapter_weights))), real(names, adapter_weights=adapter_weights))[1])
    s = schedule.from_text("frames: 4\nsteps: 2\nseed: 1\ncontext: {length: 2, overlap: 0}\nkeyframes:\n"
                           "  0: {prompt: a, lcm_lora_scale: 1.0}\n  3: {prompt: b, lcm_lora_scale: 0.5}\n")
    text2video.render(loaded, s)
    # 2 steps x 2 windows: (frames 0-1, 2-3) mean scales 0.9167 and 0.5833, times the ramp 0.5 then 1.0
    assert [round(c["lcm"], 4) for c in calls] == [0.4583, 0.2917, 0.9167, 0.5833]


def test_lcm_map_leaves_loras_unfused_with_a_note_and_refuses_per_frame_img2img(tmp_path):
    import lcmvideo

    said = []
    session = lcmvideo.Session(say=said.append, lcm_map={"start_scale": 0.5, "end_scale": 1.0})
    session.render(prompt="x", frames=2, steps=2, seed=1)
    assert not session._models.spec.fuse and session._models.adapters
    assert any("lcm_map changes the LCM-LoRA's scale at every step" in m for m in said)
    with pytest.raises(LcmvideoError, match="models.lcm_map: per-frame img2img needs the LoRAs fused"):
        img2img.Stylizer(session._models)
    from lcmvideo.output import video

    video.write(np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "src", 8.0, "png")
    (tmp_path / "ramp.yaml").write_text("models: {lcm_map: {start_scale: 0.5}}\nprompt: x\n")
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(cli, ["-q", "restyle", str(tmp_path / "src"), str(tmp_path / "ramp.yaml"), "-o", str(out)])
    assert r.exit_code == 2 and "per-frame img2img needs the LoRAs fused" in r.output, r.output
    assert not out.exists() and not (tmp_path / "o.mp4.work").exists()


def test_prompt_travel_json_carries_vae_clip_skip_and_lcm_map(tmp_path):
    f = tmp_path / "prompt_travel.json"
    f.write_text(json.dumps({
        "name": "sample", "path": "share/Stable-diffusion/model.safetensors", "vae_path": "share/VAE/vae.ckpt",
        "clip_skip": 2, "prompt_map": {"0": "smile"},
        "lcm_map": {"enable": True, "start_scale": 0.15, "end_scale": 0.75, "gradient_start": 0.2,
                    "gradient_end": 0.75}}))
    s = schedule.load(f)
    assert (s.models.vae, s.models.clip_skip) == ("share/VAE/vae.ckpt", 2)
    assert s.models.lcm_map == LcmMap(0.15, 0.75, 0.2, 0.75)
    assert not any(k in w for w in s.warnings for k in ("clip_skip", "vae_path", "lcm_map"))
    f.write_text(json.dumps({"prompt_map": {"0": "smile"}, "lcm_map": {"enable": False, "start_scale": 0.1}}))
    s = schedule.load(f)
    assert s.models.lcm_map is None and any("lcm_map is disabled there" in w for w in s.warnings)
    f.write_text(json.dumps({"prompt_map": {"0": "smile"}, "lcm_map": {"enable": True, "gradient_start": 0.9,
                                                                      "gradient_end": 0.1}}))
    with pytest.raises(LcmvideoError, match=r"lcm_map.gradient_end.*must be at least gradient_start"):
        schedule.load(f)
