"""Every loader path on the tiny family, written out in the layouts users download."""

import json
import shutil

import layouts
import numpy as np
import pytest
import torch
from conftest import render_settings
from safetensors.torch import save_file

from lcmvideo import models
from lcmvideo.errors import LcmvideoError
from lcmvideo.models import loader
from lcmvideo.pipeline import text2video
from lcmvideo.schedule import LoraRef, ModelPaths


def frames_for(mp: ModelPaths, **kw):
    loaded = models.load(models.resolve(mp))
    return text2video.render(loaded, render_settings(**kw))


@pytest.fixture(scope="session")
def reference(tiny_models):
    """The embedded default's frames: what every equivalent layout must reproduce."""
    return text2video.render(tiny_models, render_settings())


@pytest.fixture(scope="session")
def files(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    out = {
        "ldm_st": layouts.write_ldm_single_file(tiny_dir, d / "tiny_sd15.safetensors"),
        "ldm_ckpt": layouts.write_ldm_single_file(tiny_dir, d / "tiny_sd15.ckpt"),
        "mm_ckpt": layouts.write_animatediff_original(tiny_dir / "motion_adapter", d / "mm_tiny_v2.ckpt"),
        "mm_st": layouts.write_animatediff_original(tiny_dir / "motion_adapter", d / "mm_tiny_v2.safetensors"),
        "kohya": layouts.write_kohya_lora(tiny_dir / "lcm_lora" / "pytorch_lora_weights.safetensors",
                                          d / "lcm_kohya.safetensors"),
    }
    return out


def tiny_paths(tiny_dir, **kw):
    d = dict(base=str(tiny_dir), motion=str(tiny_dir / "motion_adapter"), lcm_lora=str(tiny_dir / "lcm_lora"))
    d.update(kw)
    return ModelPaths(**d)


def same(a, b, tol=0):
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


def test_embedded_default_is_deterministic_and_prompt_dependent(tiny_models, reference):
    again = text2video.render(tiny_models, render_settings())
    other_seed = text2video.render(tiny_models, render_settings(seed=2))
    other_prompt = text2video.render(tiny_models, render_settings(prompt="a blue square"))
    assert reference.shape == (8, 64, 64, 3) and reference.dtype == np.uint8
    assert same(again, reference)
    assert not same(other_seed, reference, tol=2)
    assert not same(other_prompt, reference, tol=2)


def test_diffusers_folder_copy(tiny_dir, tmp_path, reference):
    copy = tmp_path / "my-sd15"
    shutil.copytree(tiny_dir, copy)
    spec = models.resolve(tiny_paths(copy, motion=str(copy / "motion_adapter"), lcm_lora=str(copy / "lcm_lora")))
    assert (spec.base.sniffed.layout, spec.motion.sniffed.layout, spec.lcm_lora.sniffed.layout) == (
        "diffusers", "diffusers", "peft")
    assert not spec.embedded
    assert same(text2video.render(models.load(spec), render_settings()), reference)


def test_folder_scheduler_says_how_the_model_was_trained(tiny_dir, tmp_path, reference):
    """A v-prediction, zero-terminal-SNR folder is sampled as such; the sampler stays LCM."""
    copy = tmp_path / "my-v-model"
    shutil.copytree(tiny_dir, copy)
    cfg_path = copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(_class_name="DDIMScheduler", prediction_type="v_prediction", rescale_betas_zero_snr=True,
               timestep_spacing="trailing", steps_offset=0, clip_sample=True)
    cfg_path.write_text(json.dumps(cfg))
    m = models.load(models.resolve(tiny_paths(copy, motion=str(copy / "motion_adapter"),
                                              lcm_lora=str(copy / "lcm_lora"))))
    sched = m.pipe.scheduler
    assert type(sched).__name__ == "LCMScheduler"
    assert (sched.config.prediction_type, sched.config.rescale_betas_zero_snr) == ("v_prediction", True)
    assert sched.alphas_cumprod[-1] < 1e-6 and not sched.config.clip_sample  # zero SNR; LCM's own sampling keys
    assert not same(text2video.render(m, render_settings()), reference, tol=2)


def test_hf_cache_id(tiny_dir, tmp_path, monkeypatch, reference):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    layouts.make_hf_cache(hub, "someone/tiny-sd15", tiny_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    spec = models.resolve(tiny_paths(tiny_dir, base="someone/tiny-sd15"))
    assert "snapshots" in str(spec.base.path)
    assert same(text2video.render(models.load(spec), render_settings()), reference)
    with pytest.raises(LcmvideoError, match="not a file, a folder, a model in the Hugging Face cache"):
        models.resolve(tiny_paths(tiny_dir, base="someone/not-there"))


@pytest.mark.parametrize("key", ["ldm_st", "ldm_ckpt"])
def test_single_file_ldm_checkpoint(tiny_dir, files, key, reference):
    spec = models.resolve(tiny_paths(tiny_dir, base=str(files[key])))
    assert spec.base.sniffed.layout == "ldm" and spec.base.sniffed.kind == "base"
    assert same(text2video.render(models.load(spec), render_settings()), reference)


@pytest.mark.parametrize("key", ["mm_ckpt", "mm_st"])
def test_original_motion_module(tiny_dir, files, key, reference):
    spec = models.resolve(tiny_paths(tiny_dir, motion=str(files[key])))
    assert spec.motion.sniffed.layout == "animatediff-original"
    assert same(text2video.render(models.load(spec), render_settings()), reference)


@pytest.mark.parametrize("version, mid, window", [("v1", False, 24), ("v2", True, 32), ("v3", False, 32)])
def test_motion_generations_read_their_own_layout(tmp_path, version, mid, window):
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    src = MotionAdapter(block_out_channels=(32, 64, 64, 64), motion_layers_per_block=1,
                        use_motion_mid_block=mid, motion_max_seq_length=window, motion_norm_num_groups=32)
    path = layouts.write_animatediff_original(src, tmp_path / f"mm_{version}.safetensors")
    ref = models.ModelRef("motion", str(path), "flag", models.sniff(path))
    config, got = loader._load_motion(ref, torch.float32, "cpu")
    assert config["use_motion_mid_block"] == mid
    assert config["motion_max_seq_length"] == window
    want = src.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_kohya_lora_matches_peft(tiny_dir, files, reference):
    spec = models.resolve(tiny_paths(tiny_dir, lcm_lora=str(files["kohya"])))
    assert spec.lcm_lora.sniffed.layout == "kohya"
    assert same(text2video.render(models.load(spec), render_settings()), reference, tol=1)


def test_unfused_matches_fused(tiny_dir, reference):
    spec = models.resolve(tiny_paths(tiny_dir, fuse=False))
    loaded = models.load(spec)
    assert loaded.pipe.get_active_adapters() == ["lcm"]  # really kept as an adapter
    assert same(text2video.render(loaded, render_settings()), reference, tol=2)


def test_lora_scales_reach_the_weights(tiny_dir, files, reference):
    no_lcm = frames_for(tiny_paths(tiny_dir, lcm_lora="none"))
    zero = frames_for(tiny_paths(tiny_dir, lcm_lora_scale=0.0))
    assert same(zero, no_lcm, tol=1)
    assert not same(no_lcm, reference, tol=2)
    # a style LoRA at weight 0 changes nothing, at weight 1 it does, fused or not
    style0 = frames_for(tiny_paths(tiny_dir, loras=[LoraRef(str(files["kohya"]), 0.0)]))
    style1 = frames_for(tiny_paths(tiny_dir, loras=[LoraRef(str(files["kohya"]), 1.0)]))
    style1_unfused = frames_for(tiny_paths(tiny_dir, loras=[LoraRef(str(files["kohya"]), 1.0)], fuse=False))
    assert same(style0, reference, tol=1)
    assert not same(style1, reference, tol=2)
    assert same(style1, style1_unfused, tol=2)


def fake_safetensors(path, shapes):
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize("shapes, message", [
    ({"conditioner.embedders.1.model.positional_embedding": (77, 4)}, "is a SDXL base model"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
      "cond_stage_model.model.token_embedding.weight": (4, 4)}, "is a SD2.x base model"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (32, 9, 3, 3),
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (32, 768)},
     "inpainting checkpoint"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}, "is a lora model"),
    ({"some.random.tensor": (3,)}, "not a model lcmvideo recognises"),
])
def test_wrong_family_or_kind_is_refused(tmp_path, tiny_dir, shapes, message):
    path = fake_safetensors(tmp_path / "x.safetensors", shapes)
    with pytest.raises(LcmvideoError) as e:
        models.resolve(tiny_paths(tiny_dir, base=str(path)))
    assert e.value.exit_code == 2 and message in str(e.value) and str(path) in str(e.value)


def test_sdxl_lora_and_mismatched_lora_are_refused(tmp_path, tiny_dir):
    xl = fake_safetensors(tmp_path / "xl.safetensors", {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8)})
    with pytest.raises(LcmvideoError, match="SDXL lora model"):
        models.resolve(tiny_paths(tiny_dir, loras=[LoraRef(str(xl))]))
    sd15 = fake_safetensors(tmp_path / "sd15.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4)})
    spec = models.resolve(tiny_paths(tiny_dir, loras=[LoraRef(str(sd15))]))
    with pytest.raises(LcmvideoError, match="cross-attention width 768, but the base model has 64"):
        models.load(spec)


def test_base_given_as_lora_is_refused(tiny_dir, files):
    with pytest.raises(LcmvideoError, match="is a base model .* not a lora model; pass it with --model"):
        models.resolve(tiny_paths(tiny_dir, loras=[LoraRef(str(files["ldm_st"]))]))


def test_motion_for_another_unet_is_refused(tmp_path, tiny_dir):
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=(16, 32, 32, 32), motion_layers_per_block=1, motion_norm_num_groups=16
                  ).save_pretrained(tmp_path / "mm")
    spec = models.resolve(tiny_paths(tiny_dir, motion=str(tmp_path / "mm")))
    with pytest.raises(LcmvideoError, match=r"motion module is for a UNet with channels \(16, 32, 32, 32\)"):
        models.load(spec)


def test_truncated_weights_are_a_runtime_error(tmp_path, tiny_dir, files):
    cut = tmp_path / "cut.safetensors"
    data = files["ldm_st"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LcmvideoError) as e:
        models.resolve(tiny_paths(tiny_dir, base=str(cut)))
    assert e.value.exit_code == 1 and "truncated" in str(e.value)
    cut_ckpt = tmp_path / "cut.ckpt"
    data = files["ldm_ckpt"].read_bytes()
    cut_ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(LcmvideoError) as e:
        models.resolve(tiny_paths(tiny_dir, base=str(cut_ckpt)))
    assert e.value.exit_code == 1 and "cut.ckpt" in str(e.value)


class Payload:
    """Unpickling this would create a file: the loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_never_unpickled(tmp_path, tiny_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": Payload(str(marker))}, evil)
    with pytest.raises(LcmvideoError) as e:
        models.resolve(tiny_paths(tiny_dir, base=str(evil)))
    assert e.value.exit_code == 1 and "will not unpickle" in str(e.value)
    assert not marker.exists()


def test_missing_files_name_the_flag(tiny_dir, tmp_path):
    with pytest.raises(LcmvideoError) as e:
        models.resolve(tiny_paths(tiny_dir, motion=str(tmp_path / "mm_sd_v15_v2.ckpt")), sources={"motion": "flag"})
    assert e.value.exit_code == 2 and str(e.value).startswith("--motion: ")
    with pytest.raises(LcmvideoError, match="a real base model needs --motion"):
        models.resolve(ModelPaths(base=str(tiny_dir)))


def a1111_tree(root, files, tiny_dir):
    (root / "models/Stable-diffusion").mkdir(parents=True)
    (root / "models/Lora").mkdir(parents=True)
    (root / "extensions/sd-webui-animatediff/model").mkdir(parents=True)
    shutil.copy(files["ldm_st"], root / "models/Stable-diffusion/tinyshaper_8.safetensors")
    shutil.copy(files["kohya"], root / "models/Lora/lcm-lora-sdv1-5.safetensors")
    shutil.copy(files["kohya"], root / "models/Lora/watercolor.safetensors")
    shutil.copy(files["mm_ckpt"], root / "extensions/sd-webui-animatediff/model/mm_sd_v15_v2.ckpt")
    shutil.copy(files["mm_ckpt"], root / "extensions/sd-webui-animatediff/model/mm_sd_v14.ckpt")
    return root


def test_models_dir_discovery(tmp_path, files, tiny_dir, reference):
    root = a1111_tree(tmp_path / "webui", files, tiny_dir)
    found = models.discover(root)
    assert [p.name for p in found["base"]] == ["tinyshaper_8.safetensors"]
    assert sorted(p.name for p in found["lora"]) == ["lcm-lora-sdv1-5.safetensors", "watercolor.safetensors"]
    spec = models.resolve(ModelPaths(base="tinyshaper_8", models_dir=str(root), loras=[LoraRef("watercolor", 0.0)]))
    assert spec.base.path.name == "tinyshaper_8.safetensors"
    assert spec.motion.path.name == "mm_sd_v15_v2.ckpt" and spec.motion.source.startswith("found in")
    assert spec.lcm_lora.path.name == "lcm-lora-sdv1-5.safetensors"
    assert spec.loras[0].path.name == "watercolor.safetensors"
    assert same(text2video.render(models.load(spec), render_settings()), reference, tol=1)


def test_precedence_flag_schedule_env(tiny_dir, files):
    env = {"LCMVIDEO_MODEL": str(files["ldm_st"]), "LCMVIDEO_MOTION": str(files["mm_st"]),
           "LCMVIDEO_LCM_LORA": str(files["kohya"])}
    spec = models.resolve(ModelPaths(), env=env)
    assert (spec.base.source, spec.base.path) == ("env LCMVIDEO_MODEL", files["ldm_st"])
    spec = models.resolve(ModelPaths(base=str(files["ldm_ckpt"])), sources={}, env=env)
    assert (spec.base.source, spec.base.path.name) == ("schedule", "tiny_sd15.ckpt")
    spec = models.resolve(ModelPaths(base=str(files["ldm_ckpt"])), sources={"base": "flag"}, env=env)
    assert spec.base.source == "flag" and spec.motion.source == "env LCMVIDEO_MOTION"


def test_device_and_dtype_choice():
    assert models.pick_device("cpu", "auto") == ("cpu", "float32")
    assert models.pick_device("cpu", "bf16") == ("cpu", "bfloat16")
    if not torch.cuda.is_available():
        assert models.pick_device("auto", "auto") == ("cpu", "float32")
        with pytest.raises(LcmvideoError, match="--device: cuda asked for"):
            models.pick_device("cuda", "auto")
    with pytest.raises(LcmvideoError, match="--device: 'gpu0' is not one of"):
        models.pick_device("gpu0", "auto")


def test_single_file_config_choice():
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3)}
    assert loader._ldm_config_dir(sd15, "x") == loader.SD15_CONFIG
    cfg = json.loads((loader.SD15_CONFIG / "unet" / "config.json").read_text())
    assert cfg["cross_attention_dim"] == 768 and cfg["block_out_channels"] == [320, 640, 1280, 1280]
    with pytest.raises(LcmvideoError, match="only the SD1.5 architecture"):
        loader._ldm_config_dir({"model.diffusion_model.input_blocks.0.0.weight": torch.empty(48, 4, 3, 3)}, "x")
