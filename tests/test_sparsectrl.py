"""SparseCtrl RGB as img2vid's optional path: a tiny SparseControlNetModel over the random twin's
UNet, written in AnimateDiff's original layout (.ckpt and .safetensors), loaded as diffusers'
conversion reads it, and a render held equal to diffusers' AnimateDiffSparseControlNetPipeline."""

import json

import layouts
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import render_settings
from PIL import Image

from lcmvideo import models, schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.models.loader import sparsectrl_config
from lcmvideo.models.locate import resolve_sparsectrl
from lcmvideo.output import video
from lcmvideo.pipeline import text2video
from lcmvideo.pipeline.denoise import SparseControl
from lcmvideo.schedule import ModelPaths
from lcmvideo.shapes import world


def tiny_sparsectrl(unet2d_config: dict, seed: int = 0, **overrides):
    """A SparseControlNetModel for the twin's UNet, its zero-initialised layers (the condition's conv,
    the residual convs) given random weights, so that it changes the clip (the condition's conv
    strongly on the latent's channels: the twin's random VAE gives pictures latents of about 0.04)."""
    from diffusers import SparseControlNetModel

    torch.manual_seed(seed)
    net = SparseControlNetModel(**{**sparsectrl_config(unet2d_config), **overrides})
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
        net.controlnet_cond_embedding.weight[:, :-1].mul_(300)  # the mask's channel (the last) stays small
    return net.eval()


@pytest.fixture(scope="module")
def kit(tiny_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("sparsectrl")
    net = tiny_sparsectrl(tiny_models.unet2d_config)
    files = {"ckpt": layouts.write_sparsectrl(net, d / "v3_sd15_sparsectrl_rgb.ckpt"),
             "safetensors": layouts.write_sparsectrl(net, d / "v3_sd15_sparsectrl_rgb.safetensors"),
             "wrapped": layouts.write_sparsectrl(net, d / "wrapped.ckpt", wrap="controlnet")}
    net.save_pretrained(d / "animatediff-sparsectrl-rgb")  # diffusers' layout, as guoyww/animatediff-sparsectrl-rgb
    files["folder"] = d / "animatediff-sparsectrl-rgb"
    for name, scene in (("red", world.Scene("circle", "red", "black", 20, 40, 9)),
                        ("blue", world.Scene("square", "blue", "black", 44, 20, 9))):
        Image.fromarray(world.draw(scene)).save(d / f"{name}.png")
        files[name] = d / f"{name}.png"
    return {"dir": d, "net": net, **files}


def with_sparsectrl(kit, image="red", **kw):
    s = render_settings(frames=kw.pop("frames", 8), steps=kw.pop("steps", 2), seed=kw.pop("seed", 4), **kw)
    s.init_image, s.models.sparsectrl, s.shared_noise = str(kit[image]), str(kit["ckpt"]), 0.0
    return s


def one_line_exit_2(r, *says):
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "Traceback" not in r.output and all(x in lines[0] for x in says), lines[0]


def test_a_diffusers_folder_loads_as_saved(tiny_models, kit):
    ref = resolve_sparsectrl(str(kit["folder"]), None, {}, "flag")
    assert (ref.sniffed.kind, ref.sniffed.layout) == ("sparsectrl", "diffusers")
    mine = tiny_models.sparsectrl(ref).state_dict()
    assert all(torch.equal(mine[k], v) for k, v in kit["net"].state_dict().items())


@pytest.mark.parametrize("which", ["ckpt", "safetensors", "wrapped"])
def test_loading_equals_diffusers_conversion(tiny_models, kit, which):
    from diffusers import SparseControlNetModel
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    ref = resolve_sparsectrl(str(kit[which]), None, {}, "flag")
    assert (ref.sniffed.kind, ref.sniffed.layout, ref.sniffed.detail["condition"]) == \
        ("sparsectrl", "animatediff-original", "rgb")
    ours = tiny_models.sparsectrl(ref)
    raw = models.load_state_dict(kit[which])
    raw = {k.removeprefix("controlnet."): v for k, v in raw.items()}
    assert any(".temporal_transformer." in k for k in raw) and not any(".motion_modules." in k and ".attn1." in k
                                                                       for k in raw)
    theirs = SparseControlNetModel.from_config(sparsectrl_config(tiny_models.unet2d_config))
    missing, unexpected = theirs.load_state_dict(convert_animatediff_checkpoint_to_diffusers(raw), strict=False)
    assert not unexpected and all(k.endswith("pos_embed.pe") for k in missing)  # diffusers drops the tables
    mine, want = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want)
    assert all(torch.equal(mine[k], v) for k, v in kit["net"].state_dict().items())


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_render_equals_diffusers_sparsectrl_pipeline(tiny_models, kit, monkeypatch, guidance):
    from diffusers import AnimateDiffSparseControlNetPipeline, LCMScheduler
    from diffusers.pipelines.animatediff import pipeline_animatediff_sparsectrl as theirs_module

    # both sides encode the picture to the VAE's mean (diffusers samples the latent distribution)
    monkeypatch.setattr(theirs_module, "retrieve_latents", lambda out, generator=None: out.latent_dist.mode())
    s = with_sparsectrl(kit, frames=8, steps=3, seed=5, guidance=guidance)
    assert text2video.resolve_settings(s, tiny_models).init_strength == 0.0  # SparseCtrl's default
    ours = text2video.render(tiny_models, s)
    p = tiny_models.pipe
    pipe = AnimateDiffSparseControlNetPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, motion_adapter=None,
        controlnet=tiny_models.sparsectrl(resolve_sparsectrl(str(kit["ckpt"]), None, {}, "flag")),
        scheduler=LCMScheduler.from_config(p.scheduler.config), feature_extractor=None, image_encoder=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        ref = pipe(prompt="a red circle", num_frames=8, num_inference_steps=3, guidance_scale=guidance,
                   conditioning_frames=[Image.open(kit["red"]).convert("RGB")], controlnet_frame_indices=[0],
                   generator=torch.Generator("cpu").manual_seed(5), output_type="np").frames[0]
    assert ours.shape == (8, 64, 64, 3)
    assert np.abs(ours.astype(int) - (np.asarray(ref) * 255).round()).max() <= 1
    plain = text2video.render(tiny_models, render_settings(frames=8, steps=3, seed=5, shared_noise=0.0,
                                                           guidance=guidance))
    assert np.abs(ours.astype(int) - plain).mean() > 1  # the condition changes the clip


def test_scale_zero_is_no_sparsectrl_and_the_picture_matters(tiny_models, kit):
    s = with_sparsectrl(kit)
    s.init_strength, s.sparsectrl_scale = 0.7, 0.0
    no_sparse = render_settings(frames=8, steps=2, seed=4, shared_noise=0.0)
    no_sparse.init_image, no_sparse.init_strength = str(kit["red"]), 0.7
    assert np.array_equal(text2video.render(tiny_models, s), text2video.render(tiny_models, no_sparse))
    red = text2video.render(tiny_models, with_sparsectrl(kit, "red"))
    blue = text2video.render(tiny_models, with_sparsectrl(kit, "blue"))
    assert np.abs(red.astype(int) - blue).mean() > 1
    stronger = with_sparsectrl(kit, "red")
    stronger.sparsectrl_scale = 2.0
    assert np.abs(text2video.render(tiny_models, stronger).astype(int) - red).mean() > 0.5


def test_windows_without_frame_0_get_no_condition(tiny_models, kit):
    cond = torch.ones(1, 4, 10, 2, 2)
    cond[:, :, 1:] = 0
    mask = cond[:, :1].clone()
    c = SparseControl(None, cond, mask)
    _, cw, mw, _ = c.window([torch.arange(0, 6), torch.arange(4, 10)])
    assert cw.shape == (2, 4, 6, 2, 2) and mw.shape == (2, 1, 6, 2, 2)
    assert mw[0, 0, 0].eq(1).all() and mw[0, 0, 1:].eq(0).all() and not mw[1].any() and not cw[1].any()
    s = with_sparsectrl(kit, frames=10)
    s.context.length, s.context.overlap = 6, 2
    long = text2video.render(tiny_models, s)
    s.sparsectrl_scale = 0.0
    assert long.shape == (10, 64, 64, 3) and np.abs(long.astype(int) - text2video.render(tiny_models, s)).mean() > 0.5


def test_with_a_controlnet_both_residuals_add(tiny_models, kit):
    from lcmvideo.schedule import ControlSpec

    both = with_sparsectrl(kit)
    both.controlnet = [ControlSpec(images=str(kit["blue"]))]
    control_only = with_sparsectrl(kit)
    control_only.controlnet, control_only.sparsectrl_scale = both.controlnet, 0.0
    a, b, c = (text2video.render(tiny_models, x) for x in (both, control_only, with_sparsectrl(kit)))
    assert a.shape == (8, 64, 64, 3) and np.abs(a.astype(int) - b).mean() > 0.5 and np.abs(a.astype(int) - c).mean() > 0.5


def test_sd15_config_is_diffusers_sparsectrl_rgb():
    """Over SD1.5's UNet the derived config builds exactly the model diffusers' conversion script makes
    for v3_sd15_sparsectrl_rgb (--conditioning_channels 4 --use_simplified_condition_embedding)."""
    from diffusers import SparseControlNetModel

    from lcmvideo.models.loader import SD15_CONFIG
    from lcmvideo.models.weights import read_json

    with torch.device("meta"):
        ours = SparseControlNetModel(**sparsectrl_config(read_json(SD15_CONFIG / "unet" / "config.json")))
        theirs = SparseControlNetModel(conditioning_channels=4, motion_max_seq_length=32,
                                       use_simplified_condition_embedding=True)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert a["controlnet_cond_embedding.weight"].shape == (320, 5, 3, 3)


def test_cli_renders_and_the_sidecar_renders_again(tmp_path, kit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["-q", "render", "-p", "a red circle", "--frames", "4", "--steps", "2", "--seed", "3"]
    r = CliRunner().invoke(cli, [*base, "--init-image", str(kit["red"]), "--sparsectrl", str(kit["ckpt"]),
                                 "--sparsectrl-scale", "1.5", "-o", "a.mp4"])
    assert r.exit_code == 0, r.output
    frames, _ = video.read(tmp_path / "a.mp4")
    assert frames.shape[0] == 4
    side = json.loads((tmp_path / "a.mp4.json").read_text())
    st = side["settings"]
    assert st["models"]["sparsectrl"] == str(kit["ckpt"].resolve()) and st["init_strength"] == 0.0
    assert st["sparsectrl_scale"] == 1.5 and side["models"]["sparsectrl"]["layout"] == "animatediff-original"
    r = CliRunner().invoke(cli, ["-q", "render", "a.mp4.json", "-o", "b.mp4"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(frames, video.read(tmp_path / "b.mp4")[0])


def test_refusals_are_one_line_naming_the_flag(tiny_models, kit, tmp_path, monkeypatch):
    from diffusers import SparseControlNetModel

    monkeypatch.chdir(tmp_path)
    cfg = tiny_models.unet2d_config
    torch.manual_seed(0)
    scribble = SparseControlNetModel(**{**sparsectrl_config(cfg), "conditioning_channels": 3,
                                        "use_simplified_condition_embedding": False,
                                        "conditioning_embedding_out_channels": (8, 8, 8, 8)})
    layouts.write_sparsectrl(scribble, tmp_path / "v3_sd15_sparsectrl_scribble.safetensors")
    wider = tiny_sparsectrl({**cfg, "cross_attention_dim": 32})
    layouts.write_sparsectrl(wider, tmp_path / "other.safetensors")
    deeper = tiny_sparsectrl({**cfg, "layers_per_block": 2})
    layouts.write_sparsectrl(deeper, tmp_path / "deeper.safetensors")
    base = ["-q", "render", "-p", "a red circle", "--frames", "2", "--steps", "1", "--seed", "3", "-o", "x.mp4"]
    pic = ["--init-image", str(kit["red"])]
    r = CliRunner().invoke(cli, [*base, "--sparsectrl", str(kit["ckpt"])])
    one_line_exit_2(r, "--sparsectrl", "--init-image")
    r = CliRunner().invoke(cli, [*base, *pic, "--sparsectrl", "v3_sd15_sparsectrl_scribble.safetensors"])
    one_line_exit_2(r, "--sparsectrl", "scribble", "only SparseCtrl RGB")
    r = CliRunner().invoke(cli, [*base, *pic, "--sparsectrl", "other.safetensors"])
    one_line_exit_2(r, "--sparsectrl", "cross-attention 32", "the base model has")
    r = CliRunner().invoke(cli, [*base, *pic, "--sparsectrl", "deeper.safetensors"])
    one_line_exit_2(r, "--sparsectrl", "does not fit the base model")
    r = CliRunner().invoke(cli, [*base, *pic, "--motion", str(kit["ckpt"])])
    one_line_exit_2(r, "--motion", "SparseCtrl", "--sparsectrl")
    r = CliRunner().invoke(cli, [*base, *pic, "--sparsectrl", "no-such-sparsectrl"])
    one_line_exit_2(r, "--sparsectrl", "no-such-sparsectrl")
    r = CliRunner().invoke(cli, [*base, *pic, "--sparsectrl", str(models.embedded.ensure() / "controlnet")])
    one_line_exit_2(r, "--sparsectrl", "not a SparseCtrl model", "--controlnet")
    assert not (tmp_path / "x.mp4").exists()


def test_found_by_name_in_model_folders(kit, tmp_path):
    import shutil

    for root, sub in (("a1111", "models/ControlNet"), ("comfyui", "models/controlnet"),
                      ("animatediff", "models/SparseCtrl")):
        folder = tmp_path / root / sub
        folder.mkdir(parents=True)
        shutil.copy(kit["safetensors"], folder / "v3_sd15_sparsectrl_rgb.safetensors")
        spec = models.resolve(ModelPaths(models_dir=str(tmp_path / root), sparsectrl="v3_sd15_sparsectrl_rgb"))
        assert spec.sparsectrl.path == folder / "v3_sd15_sparsectrl_rgb.safetensors"
        assert (spec.sparsectrl.sniffed.kind, spec.sparsectrl.source) == ("sparsectrl", "schedule")
    # beside the motion modules it is not taken for the missing --motion
    motion = tmp_path / "a1111" / "models" / "animatediff_models"
    motion.mkdir(parents=True)
    shutil.copy(kit["safetensors"], motion / "v3_sd15_sparsectrl_rgb.safetensors")
    assert models.locate._pick_discovered("motion", [motion / "v3_sd15_sparsectrl_rgb.safetensors"],
                                          tmp_path / "a1111") is None


def test_schedule_keys_defaults_and_api(tiny_models, kit, tmp_path):
    from lcmvideo.api import Session

    f = tmp_path / "clip.yaml"
    f.write_text(f"prompt: x\ninit_image: {kit['red']}\nsparsectrl_scale: 0.5\nmodels:\n"
                 f"  sparsectrl: {kit['ckpt'].name}\n")
    (tmp_path / kit["ckpt"].name).write_bytes(kit["ckpt"].read_bytes())
    s = schedule.load(f)
    assert s.models.sparsectrl == str((tmp_path / kit["ckpt"].name).resolve()) and s.sparsectrl_scale == 0.5
    assert s.init_strength is None and schedule.init_strength_of(s) == 0.0
    assert schedule.from_text("prompt: x\ninit_strength: null\n").init_strength is None  # as a sidecar may say
    assert schedule.init_strength_of(schedule.Settings()) == 0.7
    assert schedule.init_strength_of(schedule.from_source(None, prompt="x", sparsectrl="none")) == 0.7
    assert schedule.init_strength_of(schedule.from_source(f, init_strength=0.3)) == 0.3
    with pytest.raises(LcmvideoError, match=r"sparsectrl_scale \(line 2\): must be at most 5.0"):
        schedule.from_text("prompt: x\nsparsectrl_scale: 6\n")
    with pytest.raises(LcmvideoError, match="--sparsectrl-scale: expected a number from 0 to 5"):
        schedule.from_source(None, prompt="x", sparsectrl_scale=9)
    session = Session(sparsectrl=str(kit["ckpt"]))
    s = with_sparsectrl(kit, frames=4)
    s.sparsectrl_scale = 0.5
    got = session.render(prompt="a red circle", frames=4, steps=2, seed=4, shared_noise=0.0,
                         init_image=str(kit["red"]), sparsectrl_scale=0.5)
    assert np.array_equal(got, text2video.render(tiny_models, s))
    plain = session.render(prompt="a red circle", frames=4, steps=2, seed=4, shared_noise=0.0,
                           init_image=str(kit["red"]), sparsectrl="none")  # 0.7 into the latents, no SparseCtrl
    assert session.loads == 1 and not np.array_equal(plain, got)  # SparseCtrl is not part of the model set
