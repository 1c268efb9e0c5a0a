"""AnimateDiff MotionLoRAs (original and diffusers layouts), the v3 domain adapter, and motion_scale."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import render_settings
from layouts import random_processor_lora, write_motion_lora, write_v3_adapter

from lcmvideo import models
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.output import video
from lcmvideo.pipeline import text2video
from lcmvideo.pipeline.denoise import set_motion_scale
from lcmvideo.schedule import LoraRef, ModelPaths, Settings, plan

LOCAL = dict(local_files_only=True)


def is_motion(name):
    return ".motion_modules." in name


@pytest.fixture(scope="module")
def motion_sd(tiny_models):
    """A random MotionLoRA over the twin's motion module (which has a mid-block module, like v2)."""
    return random_processor_lora(tiny_models.pipe.unet, is_motion, seed=3, std=0.3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, motion_sd):
    d = tmp_path_factory.mktemp("motion_lora")
    from safetensors.torch import save_file

    peft = {k.replace(".processor.to_out_lora.", ".to_out.0.lora_").replace(".processor.to_", ".to_")
            .replace("_lora.", ".lora_").replace("lora_down.", "lora_A.").replace("lora_up.", "lora_B."): v.contiguous()
            for k, v in motion_sd.items()}
    save_file(peft, str(d / "peft_motion_lora.safetensors"))
    return {"peft": d / "peft_motion_lora.safetensors",
            "ckpt": write_motion_lora(motion_sd, d / "v2_lora_Test.ckpt"),
            "safetensors": write_motion_lora(motion_sd, d / "v2_lora_Test.safetensors"),
            "diffusers": write_motion_lora(motion_sd, d / "animatediff-motion-lora-test", layout="diffusers").parent}


def load(**paths):
    return models.load(models.resolve(ModelPaths(**paths)))


@pytest.fixture(scope="module")
def lora_models(files):
    """The twin with the original-layout file fused at 0.8, loaded once for the checks that share it."""
    return load(motion_loras=[LoraRef(str(files["ckpt"]), 0.8)])


def render(m, **kw):
    return text2video.render(m, render_settings(**kw))


def motion_weights(unet) -> dict:
    """The motion modules' attention weights as a fused model holds them (peft's base layer)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in unet.state_dict().items()
            if is_motion(k) and ".lora_" not in k and k.endswith("weight")}


def diffusers_reference(tiny_dir, folder, weight):
    """diffusers' own AnimateDiffPipeline on the same twin, the LoRA taken by its load_lora_weights."""
    from diffusers import AnimateDiffPipeline, LCMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from lcmvideo.models.tokenizer import load_tokenizer

    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet", **LOCAL),
                                       MotionAdapter.from_pretrained(tiny_dir / "motion_adapter", **LOCAL))
    pipe = AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=load_tokenizer(), unet=unet,
                               motion_adapter=None, scheduler=LCMScheduler())
    pipe.load_lora_weights(str(folder), weight_name="diffusion_pytorch_model.safetensors", adapter_name="m")
    pipe.set_adapters(["m"], [weight])
    pipe.fuse_lora(adapter_names=["m"])
    return pipe.unet


def diffusers_script_conversion(original: dict) -> dict:
    """diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py's key map, as documented there."""
    out = {}
    for k, v in original.items():
        if "pos_encoder" in k:
            continue
        out["unet." + k.replace(".norms.0", ".norm1").replace(".norms.1", ".norm2").replace(".ff_norm", ".norm3")
            .replace(".attention_blocks.0", ".attn1").replace(".attention_blocks.1", ".attn2")
            .replace(".temporal_transformer", "")] = v
    return out


@pytest.mark.parametrize("layout", ["ckpt", "safetensors", "diffusers", "peft"])
def test_each_layout_loads_as_diffusers_loads_it(layout, files, tiny_dir, tmp_path, lora_models):
    from safetensors.torch import save_file

    from lcmvideo.models.weights import load_state_dict

    ours = lora_models if layout == "ckpt" else load(motion_loras=[LoraRef(str(files[layout]), 0.8)])
    sn = ours.spec.motion_loras[0].sniffed
    assert (sn.kind, sn.layout) == ("motion_lora", "diffusers" if layout in ("diffusers", "peft") else
                                    "animatediff-original")
    # the original file converted by diffusers' documented key map, then read by diffusers' loader
    folder = tmp_path / "converted"
    folder.mkdir()
    src = files["diffusers"] / "diffusion_pytorch_model.safetensors" if layout in ("diffusers", "peft") \
        else files[layout]
    sd = load_state_dict(src)
    save_file(sd if layout in ("diffusers", "peft") else diffusers_script_conversion(sd),
              str(folder / "diffusion_pytorch_model.safetensors"))
    ref = motion_weights(diffusers_reference(tiny_dir, folder, 0.8))
    got = motion_weights(ours.pipe.unet)
    assert set(ref) == set(got)
    moved = 0
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
        moved += ".to_" in k
    assert moved > 50  # q/k/v/out of every motion module's attention changed


def test_a_peft_lora_on_a_motion_modules_feed_forward_and_proj_out_loads_as_diffusers_loads_it(tiny_dir, tmp_path):
    """peft's layout can hold more of a motion module than AnimateDiff's (the shapes family's LoRAs change the
    feed-forward and proj_out too): loaded, every such layer (proj_in too) is what diffusers' own loader makes of the file."""
    import re

    from safetensors.torch import save_file

    twin = load()
    g = torch.Generator().manual_seed(4)
    sd = {}
    for name, mod in twin.pipe.unet.named_modules():
        if is_motion(name) and re.search(r"\.(proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|attn1\.to_q)$", name):
            sd[f"unet.{name}.lora_A.weight"] = torch.randn(2, mod.in_features, generator=g) * 0.3
            sd[f"unet.{name}.lora_B.weight"] = torch.randn(mod.out_features, 2, generator=g) * 0.3
    folder = tmp_path / "wide"
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    ours = motion_weights(load(motion_loras=[LoraRef(str(folder / "diffusion_pytorch_model.safetensors"),
                                                     0.8)]).pipe.unet)
    ref = motion_weights(diffusers_reference(tiny_dir, folder, 0.8))
    before = motion_weights(twin.pipe.unet)
    changed = [k for k in ref if ".ff.net" in k or ".proj_" in k]
    assert len(changed) > 10
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(ours[k], before[k]) for k in changed)


def test_fused_equals_unfused_and_changes_frames_and_weight_zero_is_none(files, tiny_models, lora_models):
    plain = render(tiny_models)
    fused = render(lora_models)
    unfused = render(load(motion_loras=[LoraRef(str(files["ckpt"]), 0.8)], fuse=False))
    assert np.abs(fused.astype(int) - unfused.astype(int)).max() <= 2
    assert np.abs(fused.astype(int) - plain.astype(int)).mean() > 1.0  # the LoRA changes the motion
    zero = render(load(motion_loras=[LoraRef(str(files["ckpt"]), 0.0)]))
    np.testing.assert_array_equal(zero, plain)


@pytest.fixture(scope="module")
def v3_module(tmp_path_factory, tiny_dir):
    """A motion module with the twin's channels and no mid-block module (v1/v3's shape)."""
    from layouts import motion_adapter

    from lcmvideo.models.weights import read_json

    cfg = read_json(tiny_dir / "motion_adapter" / "config.json")
    d = tmp_path_factory.mktemp("v3") / "v3_mm"
    motion_adapter("v3", block_out_channels=tuple(cfg["block_out_channels"]),
                   motion_norm_num_groups=cfg["motion_norm_num_groups"],
                   motion_num_attention_heads=cfg["motion_num_attention_heads"]).save_pretrained(d)
    return d


def test_a_v2_lora_on_a_module_without_mid_block_is_refused(files, v3_module, tmp_path):
    with pytest.raises(LcmvideoError) as e:
        load(motion=str(v3_module), motion_loras=[LoraRef(str(files["ckpt"]))])
    assert str(files["ckpt"]) in e.value.message and "mid-block" in e.value.message
    # through the CLI: exit 2, one line naming the file
    out = tmp_path / "never.mp4"
    r = CliRunner().invoke(cli, ["-q", "render", "-p", "a red circle", "--frames", "4", "--steps", "1", "-o", str(out),
                                 "--motion", str(v3_module), "--motion-lora", f"{files['ckpt']}:0.8"])
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1, r.output
    assert str(files["ckpt"]) in err and "Traceback" not in err and not out.exists()


def test_a_lora_for_other_channels_is_refused(tmp_path, tiny_models):
    sd = random_processor_lora(tiny_models.pipe.unet, is_motion, seed=1)
    k = next(k for k in sd if k.endswith("to_q_lora.down.weight"))
    sd[k] = torch.zeros(4, sd[k].shape[1] * 2)
    path = write_motion_lora(sd, tmp_path / "wide.safetensors")
    with pytest.raises(LcmvideoError, match="another motion module"):
        load(motion_loras=[LoraRef(str(path))])


def test_motion_scale_zero_draws_each_frame_by_the_image_unet(tiny_models):
    from lcmvideo.pipeline import img2img

    unet = tiny_models.pipe.unet
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 8, 8)
    ehs = torch.randn(6, 77, unet.config.cross_attention_dim)
    t = torch.tensor(500)
    with torch.inference_mode():
        full = unet(x, t, encoder_hidden_states=ehs).sample
        try:
            set_motion_scale(unet, 0.0)
            none = unet(x, t, encoder_hidden_states=ehs).sample
            set_motion_scale(unet, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
            half = unet(x, t, encoder_hidden_states=ehs).sample
        finally:
            set_motion_scale(unet, None)
        again = unet(x, t, encoder_hidden_states=ehs).sample
        alone = img2img.unet2d(tiny_models)(x[0].transpose(0, 1), t, encoder_hidden_states=ehs).sample
    torch.testing.assert_close(none[0].transpose(0, 1), alone, rtol=1e-4, atol=1e-5)
    assert (full - none).abs().max() > 1e-3  # the motion modules do mix frames at 1
    torch.testing.assert_close(again, full, rtol=0, atol=0)  # hooks left in are inert at 1
    assert (half - none).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3


def test_motion_scale_renders(tiny_models):
    today = render(tiny_models)
    zero = render(tiny_models, motion_scale=0.0)
    strong = render(tiny_models, motion_scale=2.0)
    np.testing.assert_array_equal(render(tiny_models, motion_scale=1.0), today)  # after other scales: exact
    assert np.abs(zero.astype(int) - today.astype(int)).mean() > 0.5
    assert np.abs(strong.astype(int) - today.astype(int)).mean() > 0.5


def test_keyframes_travel_motion_scale_and_motion_lora_weight(files, tiny_models):
    s = Settings(keyframes={"0": {"prompt": "a red circle", "motion_scale": 0.0, "lora_weights": {"v2_lora_Test": 0.0}},
                            "7": {"prompt": "a red circle", "motion_scale": 1.0, "lora_weights": {"v2_lora_Test": 1.0}}},
                 frames=8, steps=2, seed=1)
    s.models.motion_loras = [LoraRef(str(files["ckpt"]), 0.5)]
    from lcmvideo.schedule import finish

    s = finish(s)
    rows = plan(s)
    assert [round(r.params["motion_scale"], 3) for r in rows] == [round(i / 7, 3) for i in range(8)]
    assert rows[0].params["lora:v2_lora_Test"] == 0.0 and rows[-1].params["lora:v2_lora_Test"] == 1.0
    from lcmvideo.api import Session

    session = Session()
    travelled = session.render(s)
    assert session.models(s).adapters  # the travelling weight kept the LoRAs as adapters
    flat = session.render(s.copy(), keyframes={"0": "a red circle"})
    assert travelled.shape == flat.shape and np.abs(travelled.astype(int) - flat.astype(int)).mean() > 0.5


def test_session_reuse_takes_motion_loras_in_and_out(files, lora_models):
    from lcmvideo.api import Session

    session = Session()
    base = dict(prompt="a red circle", frames=8, steps=2, seed=1)
    plain = session.render(**base)
    with_lora = session.render(**base, motion_loras=[f"{files['ckpt']}:0.8"])
    fresh = render(lora_models)
    # fusing and unfusing in float32 moves a weight by a rounding error, at most 1 level of a pixel here
    assert np.abs(with_lora.astype(int) - fresh.astype(int)).max() <= 1
    assert np.abs(with_lora.astype(int) - plain.astype(int)).mean() > 1.0
    assert np.abs(session.render(**base).astype(int) - plain.astype(int)).max() <= 1  # unfused on the way out
    assert session.loads == 3


def test_names_clash_with_style_loras(files, tiny_dir):
    from lcmvideo.schedule import finish

    s = render_settings()
    s.models.loras = [LoraRef(str(tiny_dir / "lcm_lora"), 1.0, "same")]
    s.models.motion_loras = [LoraRef(str(files["ckpt"]), 1.0, "same")]
    with pytest.raises(LcmvideoError, match="motion_loras.*'same' is taken"):
        finish(s)


def test_embedded_names(monkeypatch, tmp_path):
    from lcmvideo.models import locate

    with pytest.raises(LcmvideoError, match="embedded:right, embedded:left"):
        models.resolve(ModelPaths(motion_loras=[LoraRef("embedded:sideways")]))
    monkeypatch.setattr(locate, "SHAPES_MOTION_LORAS", tmp_path)
    with pytest.raises(LcmvideoError) as e:
        models.resolve(ModelPaths(motion_loras=[LoraRef("embedded:right")]))
    assert "right.safetensors" in e.value.message and "\n" not in e.value.message
    assert LoraRef("embedded:right").key == "right"


def test_found_by_name_in_comfyui_and_a1111_folders(files, tmp_path):
    import shutil

    comfy = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-AnimateDiff-Evolved" / "motion_lora"
    a1111 = tmp_path / "webui" / "models" / "Lora"
    for d in (comfy, a1111):
        d.mkdir(parents=True)
        shutil.copy(files["ckpt"], d / "v2_lora_PanLeft.ckpt")
    for root in (tmp_path / "ComfyUI", tmp_path / "webui"):
        spec = models.resolve(ModelPaths(models_dir=str(root), motion_loras=[LoraRef("v2_lora_PanLeft")]))
        assert spec.motion_loras[0].path.parent in (comfy, a1111) and spec.motion_loras[0].key == "v2_lora_PanLeft"


def test_a_motion_lora_given_as_a_style_lora_is_pointed_to_the_flag(files):
    with pytest.raises(LcmvideoError, match="a motion lora model.*--motion-lora"):
        models.resolve(ModelPaths(loras=[LoraRef(str(files["ckpt"]))]))


# ---------------------------------------------------------------- the v3 domain adapter


@pytest.mark.parametrize("wrap", [True, False])
def test_v3_adapter_is_a_lora_in_its_own_layout(wrap, tiny_models, tiny_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from lcmvideo.models.identify import sniff

    unet2d = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet", **LOCAL)
    sd = random_processor_lora(unet2d, lambda n: True, seed=5, std=0.2)
    path = write_v3_adapter(sd, tmp_path / "v3_sd15_adapter.ckpt", wrap=wrap)
    sn = sniff(path)
    assert (sn.kind, sn.layout) == ("lora", "animatediff-adapter")
    m = models.load(models.resolve(ModelPaths(loras=[LoraRef(str(path), 0.7)], lcm_lora="none")))
    # AnimateDiff's load_diffusers_lora: weight += scale * up @ down, on the UNet's own layers
    want = {k: v.clone() for k, v in unet2d.state_dict().items()}
    for k, down in sd.items():
        if ".down." in k:
            target = k[len("unet."):].replace("processor.", "").replace("_lora", "").replace("down.", "")
            target = target.replace("to_out.", "to_out.0.")
            want[target] += 0.7 * sd[k.replace(".down.", ".up.")] @ down
    got = {k.replace(".base_layer", ""): v for k, v in m.pipe.unet.state_dict().items() if ".lora_" not in k}
    for k in [k for k in want if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))]:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the CLI end to end


def test_cli_render_with_motion_lora_and_sidecar_rerender(files, tmp_path, lora_models):
    out = tmp_path / "clip.mp4"
    r = CliRunner().invoke(cli, ["-q", "render", "-p", "a red circle", "--frames", "8", "--steps", "2", "--seed", "3",
                                  "--motion-lora", f"{files['ckpt']}:0.8", "--motion-scale", "1.5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    side = json.loads(video.sidecar_path(out).read_text())
    assert side["settings"]["models"]["motion_loras"] == [
        {"path": str(files["ckpt"].resolve()), "weight": 0.8, "name": "v2_lora_Test"}]
    assert side["settings"]["motion_scale"] == 1.5
    assert side["models"][f"motion_lora:{files['ckpt']}"]["weight"] == 0.8
    r = CliRunner().invoke(cli, ["-q", "render", str(video.sidecar_path(out)), "-o", str(tmp_path / "again.png"),
                                  "--format", "png"])
    assert r.exit_code == 0, r.output
    first = render(lora_models, seed=3, motion_scale=1.5)
    again, _ = video.read(tmp_path / "again.png")
    np.testing.assert_array_equal(again, first)
    plain, _ = video.read(out)
    assert plain.shape == first.shape


def test_restyle_animatediff_mode_takes_motion_loras(files, tmp_path):
    src = tmp_path / "src"
    x = np.arange(64)
    clip = np.stack([np.broadcast_to(((x[None, :, None] + 4 * t) % 64 * 4).astype(np.uint8), (64, 64, 3))
                     for t in range(8)])
    video.write(clip, src, 8.0, "png")
    args = ["-q", "restyle", str(src), "-p", "a blue circle", "--mode", "animatediff", "--seed", "4", "--steps", "2",
            "--strength", "0.8", "--no-report"]
    outs = {}
    for name, extra in (("plain", []), ("lora", ["--motion-lora", f"{files['ckpt']}:1.0"])):
        out = tmp_path / f"{name}.mp4"
        r = CliRunner().invoke(cli, [*args, *extra, "-o", str(out)])
        assert r.exit_code == 0, r.output
        outs[name] = video.read(out)[0].astype(int)
    side = json.loads(video.sidecar_path(tmp_path / "lora.mp4").read_text())
    assert side["settings"]["models"]["motion_loras"][0]["name"] == "v2_lora_Test"
    assert np.abs(outs["plain"] - outs["lora"]).mean() > 0.5
