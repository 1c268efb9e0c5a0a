"""Importers on files written as the tools write them: animatediff-cli-prompt-travel's own sample
configs (tests/data/animatediff-cli-prompt-travel), ComfyUI workflows in both formats built from the
nodes' definitions (and inside a PNG and an MP4 as ComfyUI/VideoHelperSuite store them), FizzNodes
schedule text, OpenPose JSON without a canvas size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcmvideo import schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.schedule import comfy, fizz, importers, read
from lcmvideo.schedule.parse import Where

S9 = Path(__file__).parent / "data" / "animatediff-cli-prompt-travel"
OLD_FORMAT = [f"{n}.json" for n in ("01-ToonYou", "02-Lyriel", "03-RcnzCartoon", "04-MajicMix", "05-RealisticVision",
                                    "06-Tusun", "07-FilmVelvia", "08-GhibliBackground")]


def _s9(name: str) -> dict:
    return json.loads((S9 / name).read_text())


def _clips(data: dict, source: str = "x.json"):
    return importers.from_animatediff_json(data, Where(source))


# --- animatediff-cli-prompt-travel ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in S9.glob("*.json")))
def test_every_sample_config_opens(name):
    s = schedule.load(S9 / name)
    assert s.resolved and s.frames >= 16
    assert s.models.clip_skip == _s9(name).get("clip_skip", 1)


def test_older_format_is_one_clip_per_prompt_with_the_tools_seeds():
    data = _s9("02-Lyriel.json")
    clips = _clips(data)
    assert len(clips) == 4 == read.clips(S9 / "02-Lyriel.json")
    for i, (d, _) in enumerate(clips):
        assert d["keyframes"] == {"0": data["prompt"][i]}
        assert d["negative_prompt"] == data["n_prompt"][i]
        assert d["seed"] == data["seed"][i] and d["frames"] == 16
    assert data["seed"][2] > 2**63  # the tool writes seeds above 2^63: they are kept exactly
    assert any("badhandsv5-neg look like textual-inversion names" in n for n in clips[0][1])
    s = schedule.load(S9 / "02-Lyriel.json", clip=2)
    assert s.seed == 15875751942533906000 and s.resolved[0].prompt == data["prompt"][2]
    # one negative prompt for four prompts: the tool reuses it (index modulo the count)
    toon = _clips(_s9("01-ToonYou.json"))
    assert {d["negative_prompt"] for d, _ in toon} == {_s9("01-ToonYou.json")["n_prompt"][0]}
    # `base` + `path`: the checkpoint and a LoRA over it at lora_alpha
    d, notes = _clips(_s9("08-GhibliBackground.json"))[0]
    assert d["models"]["base"] == "models/sd/CounterfeitV30_25.safetensors"
    assert d["models"]["loras"] == [{"path": "models/sd/lora_Ghibli_n3.safetensors", "weight": 1.0}]
    assert any("scheduler 'k_dpmpp' not carried over" in n for n in notes)
    assert "steps" not in d and "guidance" not in d  # 25 steps at CFG 7.5 are k_dpmpp's, not LCM's
    with pytest.raises(LcmvideoError, match=r"holds 4"):
        schedule.load(S9 / "02-Lyriel.json", clip=4)
    prompts = _clips({"prompts": ["a", "b"], "seed": [-1, 7]})  # the `prompts` spelling, -1 = random
    assert [(d["keyframes"]["0"], d.get("seed")) for d, _ in prompts] == [("a", None), ("b", 7)]


def test_prompt_map_blends_as_the_tool_does():
    d, notes = _clips(_s9("sample_lcm.json"))[0]
    # prompt_fixed_ratio 1.0 holds each prompt for the whole gap; the tool blends the last prompt
    # back into the first and by slerp
    assert (d["hold"], d["loop"], d["interpolation"], d["frames"]) == (0.99, True, "slerp", 96)
    assert d["head"] == "1girl, wizard, circlet, earrings, jewelry, purple hair,"
    assert d["models"]["lcm_map"] == {"start_scale": 0.15, "end_scale": 0.75, "gradient_start": 0.2,
                                      "gradient_end": 0.75}
    d, _ = _clips({"prompt_map": {"0": "a", "16": "b"}})[0]
    assert d["hold"] == 0.5  # the tool's default ratio
    s = schedule.load(S9 / "prompt_travel.json")
    rows = schedule.plan(s)
    assert rows[16].blend == [(0, 1.0)] and len(rows[24].blend) == 2  # held half the gap, then blended
    assert rows[-1].blend[-1][0] == 0  # the end blends back into frame 0's prompt


def test_every_s9_key_carried_or_named(tmp_path):
    """The tool's layout: config/prompts/x.json with its paths relative to data/."""
    data_dir = tmp_path / "data"
    for rel in ("share/Stable-diffusion/m.safetensors", "share/VAE/vae.ckpt", "embeddings/easynegative.pt",
                "embeddings/unused.pt", "models/motion_lora/v2_lora_PanLeft.ckpt",
                "models/lcm_lora/sd15/pytorch_lora_weights.safetensors"):
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / rel).write_bytes(b"")
    from PIL import Image

    for name in ("0000.png", "0016.png"):
        p = data_dir / "controlnet_image/test/controlnet_openpose" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p)
    (data_dir / "init_imgs/sample0").mkdir(parents=True)
    shutil.copy(data_dir / "controlnet_image/test/controlnet_openpose/0000.png", data_dir / "init_imgs/sample0/0000.png")
    cfg = _s9("prompt_travel.json")
    cfg["vae_path"] = "share/VAE/vae.ckpt"
    cfg["path"] = "share/Stable-diffusion/m.safetensors"
    cfg["n_prompt"] = ["easynegative, lowres"]
    cfg["lcm_map"]["enable"] = True
    cfg["lora_map"] = {"share/Lora/a.safetensors": 0.5,
                       "share/Lora/b.safetensors": {"region": ["0", "background"], "scale": {"0": 0.75, "64": 0.0}}}
    cfg["img2img_map"] = {"enable": True, "init_img_dir": "init_imgs/sample0", "save_init_image": True,
                          "denoising_strength": 0.85}
    f = tmp_path / "config/prompts/x.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(cfg, indent=2))
    (d, notes), = importers.from_animatediff_json(cfg, Where(str(f)))
    m = d["models"]
    assert m["base"] == str(data_dir / "share/Stable-diffusion/m.safetensors")
    assert m["vae"] == str(data_dir / "share/VAE/vae.ckpt") and m["clip_skip"] == 2
    assert m["embeddings"] == [str(data_dir / "embeddings/easynegative.pt")]
    assert m["lcm_lora"] == str(data_dir / "models/lcm_lora/sd15/pytorch_lora_weights.safetensors")
    assert m["motion_loras"] == [{"path": str(data_dir / "models/motion_lora/v2_lora_PanLeft.ckpt"), "weight": 1.0}]
    assert m["loras"][0] == {"path": "share/Lora/a.safetensors", "weight": 0.5}
    assert m["loras"][1]["weight"] == 0.75
    name = m["loras"][1]["name"]
    assert d["keyframes"]["0"]["lora_weights"] == {name: 0.75} and d["keyframes"]["64"]["lora_weights"] == {name: 0.0}
    cn, = d["controlnet"]  # only the enabled type with images: openpose
    assert cn == {"model": "control_v11p_sd15_openpose", "images": str(data_dir / "controlnet_image/test/"
                                                                          "controlnet_openpose"),
                  "scale": 1.0, "start": 0.0, "end": 1.0}
    assert d["ip_adapter"] == {"model": "ip-adapter-plus_sd15", "image": "ip_adapter_image/test", "scale": 0.5}
    assert d["init_image"] == str(data_dir / "init_imgs/sample0/0000.png") and d["init_strength"] == 0.15
    assert (d["fps"], d["format"]) == (8, "gif")
    text = "\n".join(notes)
    for named in ("scheduler 'euler_a'", "control_scale_list", "the tool runs its annotator"):
        assert named in text
    s = schedule.load(f)  # and it loads: what this lcmvideo lacks is named, the rest carried
    assert s.models.loras[1].key == name and s.resolved[2].params[f"lora:{name}"] == 0.0
    assert s.controlnet[0].model == "control_v11p_sd15_openpose"
    assert (s.ip_adapter.model, s.ip_adapter.scale) == ("ip-adapter-plus_sd15", 0.5)
    assert s.ip_adapter.image == str(f.parent / "ip_adapter_image/test")  # no data/ folder of it: beside the file


def test_contract_settings_reach_the_schedule_or_are_named():
    """motion_lora_map -> models.motion_loras, ip_adapter_map -> ip_adapter, img2img_map -> init_image:
    carried where this build has the setting, named in a note where it does not yet."""
    from dataclasses import fields

    from lcmvideo.schedule import ModelPaths, Settings

    s = schedule.load(S9 / "prompt_travel.json")
    if "motion_loras" in {f.name for f in fields(ModelPaths)}:
        assert [(r.path, r.weight) for r in s.models.motion_loras] == [("models/motion_lora/v2_lora_PanLeft.ckpt", 1.0)]
    else:
        assert any("models.motion_loras not carried over" in w for w in s.warnings)
    assert s.ip_adapter is not None and s.ip_adapter.model == "ip-adapter-plus_sd15"
    wf = api_workflow()
    wf["5"]["inputs"]["motion_scale"] = 1.3  # the old loaders' attention scale: no counterpart, noted
    (d, old_notes), = comfy.from_workflow(wf, Where("wf.json"))
    assert "motion_scale" not in d and any("scale_multival" in n for n in old_notes)
    wf["99"] = {"class_type": "ADE_MultivalDynamic", "inputs": {"float_val": 0.6}}
    wf["5"]["inputs"]["effect_multival"] = ["99", 0]  # the motion modules' effect: lcmvideo's motion_scale
    (d, _), = comfy.from_workflow(wf, Where("wf.json"))
    assert d["motion_scale"] == 0.6
    notes: list[str] = []
    kept = importers.supported(d, "wf.json", notes)
    assert ("motion_scale" in kept) == ("motion_scale" in {f.name for f in fields(Settings)})
    assert ("motion_scale" in kept) != any("motion_scale not carried over" in n for n in notes)


def test_bad_frame_key_names_file_and_key(tmp_path):
    f = tmp_path / "t.json"
    f.write_text('{\n  "prompt_map": {\n    "0": "a",\n    "eight": "b"\n  }\n}\n')
    with pytest.raises(LcmvideoError, match=r"t.json: prompt_map.eight \(line 4\): a frame number"):
        schedule.load(f)


def test_prompt_list_renders_as_a_batch_into_a_new_folder(tmp_path):
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"name": "x", "base": "", "prompt": ["a red circle", "a blue square"],
                             "n_prompt": [""], "seed": [3, 16372571278361864000], "steps": 1}))
    assert schedule.from_source(f, clip=1, frames=2).resolved[0].prompt == "a blue square"  # the Session's way
    out = tmp_path / "renders" / "deep"
    r = CliRunner().invoke(cli, ["-q", "render", str(f), "-o", f"{out}/", "--frames", "2", "-W", "16", "-H", "16"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.mp4")) == ["old-0.mp4", "old-1.mp4"]
    side = json.loads((out / "old-1.mp4.json").read_text())
    assert side["settings"]["seed"] == 16372571278361864000
    assert side["settings"]["keyframes"]["0"]["prompt"] == "a blue square"
    again = schedule.load(out / "old-1.mp4")  # an lcmvideo MP4 opens too: the settings it carries
    assert (again.seed, again.resolved[0].prompt, again.frames) == (16372571278361864000, "a blue square", 2)


# --- FizzNodes --------------------------------------------------------------------------------

FIZZ = '''max_frames: 48
pre_text: masterpiece --neg lowres
"12" :"a red circle --neg blurry",
"max_f/2" :"a blue square",
"48" :"a green triangle",
'''


def test_fizznodes_text_with_its_quirks(tmp_path):
    f = tmp_path / "fizz.txt"
    f.write_text(FIZZ)
    s = schedule.load(f)
    # frame 0 missing: the first prompt starts the clip; the key at max_frames lands on the last frame
    assert [(k.frame, k.prompt) for k in s.resolved] == [
        (0, "masterpiece a red circle"), (12, "masterpiece a red circle"), (24, "masterpiece a blue square"),
        (47, "masterpiece a green triangle")]
    assert s.resolved[1].negative_prompt == "lowres blurry" and s.resolved[2].negative_prompt == "lowres"
    assert (s.frames, s.hold, s.interpolation, s.loop) == (48, 0.0, "linear", False)
    rows = schedule.plan(s)
    assert rows[18].blend == [(1, 0.5), (2, 0.5)]  # linear from 12 to 24, no hold
    assert any("no frame 0" in w for w in s.warnings) and any("max_frames (48)" in w for w in s.warnings)
    f.write_text('"0": "a",\n"8": "b `t/2`",\n')
    s = schedule.load(f)
    assert s.frames == fizz.MAX_FRAMES and s.resolved[1].prompt == "b 4"
    f.write_text('"0": "a",\n"8": b,\n')
    with pytest.raises(LcmvideoError, match=r"fizz.txt: not a FizzNodes schedule"):
        schedule.load(f)
    f.write_text('"0": "a",\n"max_q": "b",\n')
    with pytest.raises(LcmvideoError, match=r"fizz.txt: key 'max_q': a frame number or an expression"):
        schedule.load(f)


# --- ComfyUI ----------------------------------------------------------------------------------

FIZZ_TEXT = '"0" :"a red circle",\n"16" :"a blue square",\n'


def _node(i, kind, widgets, inputs=(), outputs=()):
    return {"id": i, "type": kind, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": i, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": ln} for n, t, ln in inputs],
            "outputs": [{"name": n, "type": t, "links": lk, "slot_index": s} for s, (n, t, lk) in enumerate(outputs)],
            "properties": {"Node name for S&R": kind}, "widgets_values": widgets}


def ui_workflow() -> dict:
    """The tutorial's graph as the ComfyUI frontend saves it (positional widgets_values)."""
    nodes = [
        _node(1, "CheckpointLoaderSimple", ["dreamshaper_8.safetensors"],
              outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [2]), ("VAE", "VAE", None)]),
        _node(2, "LoraLoader", ["lcm-lora-sdv1-5.safetensors", 1.0, 1.0],
              [("model", "MODEL", 1), ("clip", "CLIP", 2)], [("MODEL", "MODEL", [3]), ("CLIP", "CLIP", [4])]),
        _node(3, "LoraLoader", ["add_detail.safetensors", 0.6, 0.6],
              [("model", "MODEL", 3), ("clip", "CLIP", 4)], [("MODEL", "MODEL", [5]), ("CLIP", "CLIP", [7])]),
        _node(4, "ADE_AnimateDiffUniformContextOptions", [16, 1, 4, "uniform", True, "flat", False, 0, 1],
              outputs=[("CONTEXT_OPTIONS", "CONTEXT_OPTIONS", [6])]),
        _node(5, "ADE_AnimateDiffLoaderWithContext", ["v3_sd15_mm.ckpt", "lcm avg(sqrt_linear,linear)", 1.0, True],
              [("model", "MODEL", 5), ("context_options", "CONTEXT_OPTIONS", 6), ("motion_lora", "MOTION_LORA", 16)],
              [("MODEL", "MODEL", [10])]),
        _node(6, "CLIPSetLastLayer", [-2], [("clip", "CLIP", 7)], [("CLIP", "CLIP", [8, 9])]),
        _node(7, "BatchPromptSchedule", [FIZZ_TEXT, 32, False, 0, 0], [("clip", "CLIP", 8)],
              [("POS", "CONDITIONING", [17]), ("NEG", "CONDITIONING", None)]),
        _node(8, "CLIPTextEncode", ["blurry, low quality"], [("clip", "CLIP", 9)],
              [("CONDITIONING", "CONDITIONING", [18])]),
        _node(9, "EmptyLatentImage", [512, 512, 32], outputs=[("LATENT", "LATENT", [13])]),
        _node(10, "KSampler", [123456789012, "fixed", 4, 1.5, "lcm", "sgm_uniform", 1.0],
              [("model", "MODEL", 10), ("positive", "CONDITIONING", 11), ("negative", "CONDITIONING", 12),
               ("latent_image", "LATENT", 13)], [("LATENT", "LATENT", [14])]),
        _node(11, "VAELoader", ["vae-ft-mse-840000-ema-pruned.safetensors"], outputs=[("VAE", "VAE", [15])]),
        _node(12, "ADE_AnimateDiffLoRALoader", ["v2_lora_PanLeft.ckpt", 0.8],
              outputs=[("MOTION_LORA", "MOTION_LORA", [16])]),
        _node(13, "VAEDecode", [], [("samples", "LATENT", 14), ("vae", "VAE", 15)], [("IMAGE", "IMAGE", [21, 22])]),
        _node(14, "ControlNetApplyAdvanced", [0.7, 0.0, 0.8],
              [("positive", "CONDITIONING", 17), ("negative", "CONDITIONING", 18),
               ("control_net", "CONTROL_NET", 19), ("image", "IMAGE", 20)],
              [("positive", "CONDITIONING", [11]), ("negative", "CONDITIONING", [12])]),
        _node(15, "ControlNetLoaderAdvanced", ["control_v11p_sd15_openpose.pth"],
              outputs=[("CONTROL_NET", "CONTROL_NET", [19])]),
        _node(16, "VHS_LoadImagesPath", {"directory": "poses", "image_load_cap": 0, "skip_first_images": 0,
                                         "select_every_nth": 1}, outputs=[("IMAGE", "IMAGE", [20])]),
        _node(17, "VHS_VideoCombine", {"frame_rate": 12, "loop_count": 0, "filename_prefix": "AnimateDiff",
                                       "format": "video/h264-mp4", "pingpong": False, "save_output": True,
                                       "videopreview": {"hidden": False, "paused": False}},
              [("images", "IMAGE", 21)]),
        _node(18, "FILM VFI", ["film_net_fp32.pt", 10, 2], [("frames", "IMAGE", 22)]),
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 2, 0, 3, 0, "MODEL"], [4, 2, 1, 3, 1, "CLIP"],
             [5, 3, 0, 5, 0, "MODEL"], [6, 4, 0, 5, 1, "CONTEXT_OPTIONS"], [7, 3, 1, 6, 0, "CLIP"],
             [8, 6, 0, 7, 0, "CLIP"], [9, 6, 0, 8, 0, "CLIP"], [10, 5, 0, 10, 0, "MODEL"],
             [11, 14, 0, 10, 1, "CONDITIONING"], [12, 14, 1, 10, 2, "CONDITIONING"], [13, 9, 0, 10, 3, "LATENT"],
             [14, 10, 0, 13, 0, "LATENT"], [15, 11, 0, 13, 1, "VAE"], [16, 12, 0, 5, 2, "MOTION_LORA"],
             [17, 7, 0, 14, 0, "CONDITIONING"], [18, 8, 0, 14, 1, "CONDITIONING"], [19, 15, 0, 14, 2, "CONTROL_NET"],
             [20, 16, 0, 14, 3, "IMAGE"], [21, 13, 0, 17, 0, "IMAGE"], [22, 13, 0, 18, 0, "IMAGE"]]
    return {"last_node_id": 18, "last_link_id": 22, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def api_workflow() -> dict:
    """The same graph as ComfyUI's API format ("Save (API Format)", and the PNG's `prompt` chunk)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "lcm-lora-sdv1-5.safetensors", "strength_model": 1.0,
                                                     "strength_clip": 1.0, "model": ["1", 0], "clip": ["1", 1]}},
        "3": {"class_type": "LoraLoader", "inputs": {"lora_name": "add_detail.safetensors", "strength_model": 0.6,
                                                     "strength_clip": 0.6, "model": ["2", 0], "clip": ["2", 1]}},
        "4": {"class_type": "ADE_AnimateDiffUniformContextOptions", "inputs": {
            "context_length": 16, "context_stride": 1, "context_overlap": 4, "context_schedule": "uniform",
            "closed_loop": True, "fuse_method": "flat", "use_on_equal_length": False, "start_percent": 0,
            "guarantee_steps": 1}},
        "5": {"class_type": "ADE_AnimateDiffLoaderWithContext", "inputs": {
            "model_name": "v3_sd15_mm.ckpt", "beta_schedule": "lcm avg(sqrt_linear,linear)", "motion_scale": 1.0,
            "apply_v2_models_properly": True, "model": ["3", 0], "context_options": ["4", 0],
            "motion_lora": ["12", 0]}},
        "6": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["3", 1]}},
        "7": {"class_type": "BatchPromptSchedule", "inputs": {"text": FIZZ_TEXT, "max_frames": 32,
                                                              "print_output": False, "start_frame": 0, "end_frame": 0,
                                                              "clip": ["6", 0]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["6", 0]}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 32}},
        "10": {"class_type": "KSampler", "inputs": {"seed": 123456789012, "steps": 4, "cfg": 1.5, "sampler_name": "lcm",
                                                    "scheduler": "sgm_uniform", "denoise": 1.0, "model": ["5", 0],
                                                    "positive": ["14", 0], "negative": ["14", 1],
                                                    "latent_image": ["9", 0]}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-ft-mse-840000-ema-pruned.safetensors"}},
        "12": {"class_type": "ADE_AnimateDiffLoRALoader", "inputs": {"name": "v2_lora_PanLeft.ckpt", "strength": 0.8}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["11", 0]}},
        "14": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "strength": 0.7, "start_percent": 0.0, "end_percent": 0.8, "positive": ["7", 0], "negative": ["8", 0],
            "control_net": ["15", 0], "image": ["16", 0]}},
        "15": {"class_type": "ControlNetLoaderAdvanced", "inputs": {"control_net_name": "control_v11p_sd15_openpose.pth"}},
        "16": {"class_type": "VHS_LoadImagesPath", "inputs": {"directory": "poses", "image_load_cap": 0,
                                                              "skip_first_images": 0, "select_every_nth": 1}},
        "17": {"class_type": "VHS_VideoCombine", "inputs": {
            "frame_rate": 12, "loop_count": 0, "filename_prefix": "AnimateDiff", "format": "video/h264-mp4",
            "pingpong": False, "save_output": True, "images": ["13", 0]}},
        "18": {"class_type": "FILM VFI", "inputs": {"ckpt_name": "film_net_fp32.pt", "clear_cache_after_n_frames": 10,
                                                    "multiplier": 2, "frames": ["13", 0]}},
    }


EXPECTED = {
    "seed": 123456789012, "steps": 4, "guidance": 1.5, "width": 512, "height": 512, "frames": 32, "fps": 12,
    "format": "mp4", "negative_prompt": "blurry, low quality", "hold": 0.0, "interpolation": "linear", "loop": True,
    "context": {"length": 16, "overlap": 4},
    "keyframes": {"0": {"prompt": "a red circle"}, "16": {"prompt": "a blue square"}},
    "models": {"sampler": "lcm", "base": "dreamshaper_8.safetensors", "lcm_lora": "lcm-lora-sdv1-5.safetensors",
               "lcm_lora_scale": 1.0, "loras": [{"path": "add_detail.safetensors", "weight": 0.6}],
               "motion": "v3_sd15_mm.ckpt", "motion_loras": [{"path": "v2_lora_PanLeft.ckpt", "weight": 0.8}],
               "clip_skip": 2, "vae": "vae-ft-mse-840000-ema-pruned.safetensors"},
    "controlnet": [{"model": "control_v11p_sd15_openpose.pth", "scale": 0.7, "start": 0.0, "end": 0.8,
                    "images": "poses"}],
}


@pytest.mark.parametrize("make", [ui_workflow, api_workflow])
def test_comfyui_workflow_both_formats(make):
    (d, notes), = comfy.from_workflow(make(), Where("wf.json"))
    assert d == EXPECTED
    assert any("FILM VFI (node 18)" in n for n in notes)
    assert not any("KSampler" in n or "LoraLoader" in n or "BatchPromptSchedule" in n for n in notes)


def test_comfyui_workflow_in_json_png_and_mp4(tmp_path):
    import av
    import numpy as np
    from PIL import Image, PngImagePlugin

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(ui_workflow(), indent=2))
    png = tmp_path / "ComfyUI_00001_.png"
    info = PngImagePlugin.PngInfo()  # as ComfyUI's SaveImage writes them
    info.add_text("prompt", json.dumps(api_workflow()))
    info.add_text("workflow", json.dumps(ui_workflow()))
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    mp4 = tmp_path / "AnimateDiff_00001.mp4"  # Video Combine: ffmpeg metadata tags, use_metadata_tags
    c = av.open(str(mp4), "w", options={"movflags": "use_metadata_tags"})
    c.metadata["prompt"] = json.dumps(api_workflow())
    c.metadata["workflow"] = json.dumps(ui_workflow())
    stream = c.add_stream("libx264", rate=8)
    stream.width = stream.height = 16
    stream.pix_fmt = "yuv420p"
    for p in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
        c.mux(p)
    for p in stream.encode():
        c.mux(p)
    c.close()
    plans = []
    for f in (wf, png, mp4):
        s = schedule.load(f)
        assert [(k.frame, k.prompt) for k in s.resolved] == [(0, "a red circle"), (16, "a blue square")]
        assert (s.frames, s.seed, s.models.clip_skip, s.context.length, s.controlnet[0].scale) == (32, 123456789012,
                                                                                                    2, 16, 0.7)
        plans.append([r.blend for r in schedule.plan(s)])
    assert plans[0] == plans[1] == plans[2]
    (tmp_path / "poses").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "poses" / "0000.png")
    r = CliRunner().invoke(cli, ["plan", str(png)])
    assert r.exit_code == 0 and "32 frames, 2 keyframe(s)" in r.output, r.output
    bad = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(bad)
    r = CliRunner().invoke(cli, ["plan", str(bad)])
    assert r.exit_code == 2 and "plain.png: no ComfyUI workflow in it" in r.output


def test_comfyui_gen2_nodes_and_ade_prompt_scheduling():
    wf = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
        "2": {"class_type": "ADE_LoadAnimateDiffModel", "inputs": {"model_name": "mm_sd_v15_v2.ckpt"}},
        "3": {"class_type": "ADE_ApplyAnimateDiffModelSimple", "inputs": {"motion_model": ["2", 0]}},
        "4": {"class_type": "ADE_LoopedUniformContextOptions", "inputs": {
            "context_length": 8, "context_stride": 1, "context_overlap": 2, "closed_loop": False}},
        "5": {"class_type": "ADE_UseEvolvedSampling", "inputs": {"beta_schedule": "autoselect", "model": ["1", 0],
                                                                 "m_models": ["3", 0], "context_options": ["4", 0]}},
        "6": {"class_type": "ADE_PromptScheduling", "inputs": {"prompts": '"0": "a cat",\n"0.5": "a dog"',
                                                               "clip": ["1", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "8": {"class_type": "ADE_EmptyLatentImageLarge", "inputs": {"width": 256, "height": 384, "batch_size": 24}},
        "9": {"class_type": "KSamplerAdvanced", "inputs": {
            "add_noise": "enable", "noise_seed": 2**64 - 1, "steps": 6, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable",
            "model": ["5", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0]}},
    }
    (d, notes), = comfy.from_workflow(wf, Where("gen2.json"))
    assert d["models"] == {"base": "base.safetensors", "motion": "mm_sd_v15_v2.ckpt"}
    assert d["context"] == {"length": 8, "overlap": 2} and "loop" not in d
    assert d["keyframes"] == {"0": {"prompt": "a cat"}, "0.5": {"prompt": "a dog"}}
    assert (d["seed"], d["steps"], d["width"], d["height"], d["frames"]) == (2**64 - 1, 6, 256, 384, 24)
    assert any("sampler 'euler' not carried over" in n for n in notes)
    wf["9"]["inputs"].update(steps=25, cfg=7.5)  # set for euler: LCM would burn at CFG 7.5
    (d, notes), = comfy.from_workflow(wf, Where("gen2.json"))
    assert "steps" not in d and "guidance" not in d and any("steps 25 and guidance 7.5 suit" in n for n in notes)
    wf["9"]["class_type"] = "SamplerCustom"
    with pytest.raises(LcmvideoError, match=r"gen2.json: no KSampler"):
        comfy.from_workflow(wf, Where("gen2.json"))


def test_comfyui_lcm_gen1_graph():
    """The LCM tutorial's shape: LCM LoRA (model only), ModelSamplingDiscrete lcm, the Gen1 loader
    with a Multival motion effect, euler_ancestral at LCM's steps and CFG."""
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
          "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "LCM/pytorch_lora_weights.safetensors",
                                                                "strength_model": 0.9, "model": ["1", 0]}},
          "3": {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "lcm", "zsnr": False, "model": ["2", 0]}},
          "4": {"class_type": "ADE_MultivalDynamic", "inputs": {"float_val": 1.2}},
          "5": {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {
              "model_name": "mm.ckpt", "beta_schedule": "lcm", "model": ["3", 0], "effect_multival": ["4", 0]}},
          "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
          "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 16}},
          "8": {"class_type": "KSampler", "inputs": {
              "seed": 1, "steps": 8, "cfg": 2.5, "sampler_name": "euler_ancestral", "scheduler": "sgm_uniform",
              "denoise": 1, "model": ["5", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["7", 0]}}}
    (d, notes), = comfy.from_workflow(wf, Where("w.json"))
    assert d["models"] == {"base": "b.safetensors", "lcm_lora": "LCM/pytorch_lora_weights.safetensors",
                           "lcm_lora_scale": 0.9, "sampler": "lcm", "motion": "mm.ckpt"}
    assert (d["steps"], d["guidance"], d["motion_scale"]) == (8, 2.5, 1.2)  # LCM's own: kept
    assert not any("ModelSamplingDiscrete" in n or "nodes not carried over" in n for n in notes)


# --- convert round-trips ----------------------------------------------------------------------

def test_convert_round_trips_each_format(tmp_path):
    fz = tmp_path / "fizz.txt"
    fz.write_text(FIZZ)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(api_workflow()))
    for src in (S9 / "prompt_travel.json", S9 / "sample_lcm.json", fz, wf):
        out = tmp_path / f"{src.stem}.yaml"
        r = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out)])
        assert r.exit_code == 0, r.output
        a, b = schedule.load(src), schedule.load(out)
        assert [(k.frame, k.prompt, k.negative_prompt, k.params) for k in a.resolved] == \
               [(k.frame, k.prompt, k.negative_prompt, k.params) for k in b.resolved]
        assert [(r.blend, r.params) for r in schedule.plan(a)] == [(r.blend, r.params) for r in schedule.plan(b)]


# --- OpenPose JSON without a canvas -----------------------------------------------------------

def test_openpose_json_without_canvas_from_the_command_line(tmp_path):
    import numpy as np
    from PIL import Image

    poses = tmp_path / "poses"
    poses.mkdir()
    pts = [0.0] * 54
    for j, (x, y) in enumerate([(320, 100), (320, 200), (250, 200), (230, 300)]):
        pts[j * 3:j * 3 + 3] = [x, y, 0.9]
    (poses / "0000.json").write_text(json.dumps({"version": 1.3, "people": [{"person_id": [-1],
                                                                                 "pose_keypoints_2d": pts}]}))
    base = ["-q", "render", "-p", "a dancer", "--frames", "2", "--steps", "1", "-W", "16", "-H", "16"]
    r = CliRunner().invoke(cli, [*base, "--controlnet", "embedded", str(poses), "-o", str(tmp_path / "a.mp4")])
    assert r.exit_code == 2 and "--controlnet MODEL FOLDER@WIDTHxHEIGHT" in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "--controlnet", "embedded", f"{poses}@640x480", "-o", str(tmp_path / "b.mp4")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b.mp4.json").read_text())["settings"]["controlnet"][0]["size"] == [640, 480]
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(tmp_path / "frame.png")  # the frame they came from
    from lcmvideo.pipeline import control

    assert control.from_flag("embedded", f"{poses}@{tmp_path / 'frame.png'}").size == [640, 480]
    assert control.source_size("640x480", "x") == (640, 480)
    with pytest.raises(LcmvideoError, match=r"--controlnet: nowhere.mp4: give the poses' source size"):
        control.from_flag("embedded", f"{poses}@nowhere.mp4")


# --- robustness: any input in the format's shape gives a schedule or a one-line error ----------

def _ok_or_one_line(fn):
    try:
        fn()
    except LcmvideoError as e:
        assert "\n" not in e.message and e.message.startswith("x."), e.message


def _nest(children):
    return st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)


json_value = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) |
                          st.text(max_size=8), _nest, max_leaves=8)
S9_KEYS = ["prompt_map", "prompt", "prompts", "n_prompt", "seed", "head_prompt", "tail_prompt", "lora_map",
           "motion_lora_map", "lcm_map", "controlnet_map", "ip_adapter_map", "img2img_map", "output", "steps",
           "guidance_scale", "clip_skip", "vae_path", "path", "base", "prompt_fixed_ratio", "region_map"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.dictionaries(st.sampled_from(S9_KEYS), json_value | st.dictionaries(
    st.sampled_from(["0", "8", "x", "-1", "1.5"]), json_value, max_size=3), min_size=1, max_size=6))
def test_s9_any_shape(data):
    def go():
        for d, notes in importers.from_animatediff_json(data, Where("x.json")):
            schedule.from_dict(importers.supported(d, "x.json", list(notes)), Where("x.json"))
    _ok_or_one_line(go)


NODE_TYPES = sorted(comfy.WIDGETS) + ["Unknown"]
SCHEDULE_TEXT = st.sampled_from(['"0": "a",', '"40": "b --neg c",\n"max_f": "d"', '"x": "y"', '0 = "a", 0.5: = "b"',
                                 '"-1": "z"', "{", '"0": 3'])


@FUZZ
@given(st.dictionaries(st.sampled_from([str(i) for i in range(6)]), st.fixed_dictionaries({
    "class_type": st.sampled_from(NODE_TYPES),
    "inputs": st.dictionaries(st.sampled_from(["model", "positive", "negative", "latent_image", "text", "seed",
                                               "steps", "cfg", "width", "batch_size", "ckpt_name", "image",
                                               "control_net", "context_options", "strength", "max_frames"]),
                              json_value | SCHEDULE_TEXT | st.tuples(st.sampled_from([str(i) for i in range(6)]),
                                                                     st.integers(0, 2)).map(list), max_size=5)}),
                       min_size=1))
def test_comfyui_api_any_shape(data):
    def go():
        for d, notes in comfy.from_workflow(data, Where("x.json")):
            schedule.from_dict(importers.supported(d, "x.json", list(notes)), Where("x.json"))
    _ok_or_one_line(go)


@FUZZ
@given(st.lists(st.fixed_dictionaries({"id": st.integers(0, 5), "type": st.sampled_from(NODE_TYPES),
                                       "widgets_values": st.lists(json_value, max_size=8) | json_value,
                                       "inputs": st.lists(st.fixed_dictionaries({
                                           "name": st.sampled_from(["model", "positive", "negative", "latent_image",
                                                                    "clip", "image"]),
                                           "link": st.integers(0, 8) | st.none()}), max_size=4)}), max_size=6),
       st.lists(st.lists(st.integers(0, 8), min_size=6, max_size=6), max_size=8))
def test_comfyui_ui_any_shape(nodes, links):
    def go():
        for d, notes in comfy.from_workflow({"nodes": nodes, "links": links}, Where("x.json")):
            schedule.from_dict(importers.supported(d, "x.json", list(notes)), Where("x.json"))
    _ok_or_one_line(go)


@FUZZ
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["0", "8", "max_f/2", "max_f", "-1", "x", "1e9", "2**99", "(", "16"]),
              st.text(alphabet='ab `t-neg"\\,', max_size=10)).map(lambda kv: f'"{kv[0]}": "{kv[1]}",'),
    st.sampled_from(["max_frames: 24", "max_frames: 0", "max_frames: x", "pre_text: p --neg n", ",", "", "}"])),
    max_size=6))
def test_fizznodes_any_shape(lines):
    text = "\n".join(lines)

    def go():
        if not fizz.looks_like_schedule(text):
            return
        for d, _ in fizz.from_text(text, Where("x.txt")):
            schedule.from_dict(d, Where("x.txt"))
    _ok_or_one_line(go)
