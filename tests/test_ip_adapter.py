"""IP-Adapter: tiny adapters made here for the embedded UNet (as diffusers' own tests make theirs:
create_ip_adapter_state_dict / create_ip_adapter_plus_state_dict), in h94's two file layouts, with
a tiny CLIP image encoder; against diffusers' own load_ip_adapter path on the same model."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import render_settings  # noqa: E402

ENCODER = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
               patch_size=8, projection_dim=32, hidden_act="gelu")


def _cross_attentions(unet):
    """(processor name, hidden size) of the UNet's cross-attentions, in the order h94's files number them."""
    cfg = unet.config
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        if name.startswith("mid_block"):
            yield name, cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            yield name, list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            yield name, cfg.block_out_channels[int(name[len("down_blocks.")])]


def ip_state_dict(unet, kind="plain", seed=0, image_width=None):
    """{"image_proj": ..., "ip_adapter": ...} in h94's original key layout, random but seeded."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterFullImageProjection, IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    ctx = unet.config.cross_attention_dim
    ip = {}
    for i, (_, hidden) in enumerate(_cross_attentions(unet)):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = torch.randn(hidden, ctx) * 0.3
        ip[f"{2 * i + 1}.to_v_ip.weight"] = torch.randn(hidden, ctx) * 0.3
    if kind == "plain":
        m = ImageProjection(cross_attention_dim=ctx, image_embed_dim=image_width or ENCODER["projection_dim"],
                            num_image_text_embeds=4)
        proj = {k.replace("image_embeds", "proj"): v for k, v in m.state_dict().items()}
    elif kind == "full":
        m = IPAdapterFullImageProjection(cross_attention_dim=ctx, image_embed_dim=image_width or ENCODER["hidden_size"])
        names = {"ff.net.0.proj": "proj.0", "ff.net.2": "proj.2", "norm": "proj.3"}
        proj = {names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in m.state_dict().items()}
    else:
        m = IPAdapterPlusImageProjection(embed_dims=image_width or ENCODER["hidden_size"], output_dims=ctx,
                                         hidden_dims=64, depth=4, dim_head=64, heads=1, num_queries=4)
        sd, proj = m.state_dict(), {}
        for k, v in sd.items():  # diffusers' names back to the Resampler's
            parts = k.split(".")
            if parts[0] != "layers":
                proj[k] = v
                continue
            i, rest = parts[1], ".".join(parts[2:])
            if rest.startswith("attn.to_v"):
                continue
            rest = {"ln0.weight": "0.norm1.weight", "ln0.bias": "0.norm1.bias", "ln1.weight": "0.norm2.weight",
                    "ln1.bias": "0.norm2.bias", "attn.to_q.weight": "0.to_q.weight",
                    "attn.to_k.weight": "0.to_kv.weight", "attn.to_out.0.weight": "0.to_out.weight",
                    "ff.0.weight": "1.0.weight", "ff.0.bias": "1.0.bias", "ff.1.net.0.proj.weight": "1.1.weight",
                    "ff.1.net.2.weight": "1.3.weight"}[rest]
            proj[f"layers.{i}.{rest}"] = torch.cat([v, sd[k.replace("to_k", "to_v")]]) if "to_kv" in rest else v
    return {"image_proj": proj, "ip_adapter": ip}


def write_adapter(sd: dict, path: Path) -> Path:
    if path.suffix == ".bin":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file({f"{part}.{k}": v.contiguous() for part, d in sd.items() for k, v in d.items()}, str(path))
    return path


def write_encoder(folder: Path, seed=0, **over) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**{**ENCODER, **over})).save_pretrained(folder)
    return folder


def write_image(path: Path, colour, size=48) -> Path:
    from PIL import Image

    a = np.zeros((size, size, 3), np.uint8)
    a[:] = colour
    a[size // 4:size // 2, size // 4:size // 2] = 255 - np.array(colour, np.uint8)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_models):
    """Adapters (plain in .bin and .safetensors, plus) with image_encoder/ beside them, and images."""
    d = tmp_path_factory.mktemp("ip")
    unet = tiny_models.pipe.unet
    out = {"dir": d, "unet": unet}
    out["bin"] = write_adapter(ip_state_dict(unet), d / "ip-adapter_tiny.bin")
    out["safetensors"] = write_adapter(ip_state_dict(unet), d / "ip-adapter_tiny.safetensors")
    out["plus"] = write_adapter(ip_state_dict(unet, "plus", seed=1), d / "ip-adapter-plus_tiny.safetensors")
    out["full"] = write_adapter(ip_state_dict(unet, "full", seed=2), d / "ip-adapter-full-face_tiny.bin")
    out["encoder"] = write_encoder(d / "image_encoder")
    out["red"] = write_image(d / "red.png", (220, 30, 30))
    out["blue"] = write_image(d / "blue.png", (30, 30, 220))
    return out


def ip_settings(kit, model="bin", image="red", scale=1.0, **kw):
    from lcmvideo.schedule import IpAdapterSpec

    return quick(ip_adapter=IpAdapterSpec(str(kit[model]), str(kit[image]), scale), **kw)


def quick(**kw):
    return render_settings(**{"frames": 4, "steps": 1, **kw})


def render(models, s, cache=None):
    from lcmvideo.pipeline import text2video

    return text2video.render(models, s, cache=cache)


def test_both_layouts_load_alike_and_change_the_frames(kit, tiny_models):
    from lcmvideo.models import sniff

    for key in ("bin", "safetensors", "plus"):
        s = sniff(kit[key])
        assert s.kind == "ip_adapter" and s.detail["context_dim"] == 64
    plain = render(tiny_models, ip_settings(kit, "bin"))
    assert plain.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(plain, render(tiny_models, ip_settings(kit, "safetensors")))
    none = render(tiny_models, quick())
    assert np.abs(plain.astype(int) - none).mean() > 1
    plus = render(tiny_models, ip_settings(kit, "plus"))
    assert np.abs(plus.astype(int) - none).mean() > 1
    # the adapter is installed only while it renders: a render without one is as before
    np.testing.assert_array_equal(none, render(tiny_models, quick()))


def test_scale_zero_is_no_ip_adapter_and_the_image_matters(kit, tiny_models):
    none = render(tiny_models, quick(guidance=1.5))
    zero = render(tiny_models, ip_settings(kit, scale=0.0, guidance=1.5))
    np.testing.assert_array_equal(zero, none)
    red = render(tiny_models, ip_settings(kit, image="red"))
    blue = render(tiny_models, ip_settings(kit, image="blue"))
    assert np.abs(red.astype(int) - blue).mean() > 1


@pytest.mark.parametrize("kind", ["bin", "plus", "full"])
def test_one_unet_call_equals_diffusers_load_ip_adapter(kit, tiny_models, kind):
    """diffusers' AnimateDiffPipeline.load_ip_adapter + prepare_ip_adapter_image_embeds +
    added_cond_kwargs against the project's loader, IpCond and denoise.predict, with CFG."""
    import copy

    from diffusers import AnimateDiffPipeline

    from lcmvideo.models import ipadapter
    from lcmvideo.output.images import read_image
    from lcmvideo.pipeline import ipadapter as ip_pipe
    from lcmvideo.pipeline.denoise import predict
    from lcmvideo.schedule import finish, plan

    models = tiny_models
    pipe = models.pipe
    theirs = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                 unet=copy.deepcopy(pipe.unet), motion_adapter=None, scheduler=pipe.scheduler)
    path = kit[kind]
    theirs.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None)
    s = ip_settings(kit, kind, scale=0.8, guidance=2.0, frames=4)
    s = finish(s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 8, 8, generator=g)
    text = torch.randn(4, 77, 64, generator=g)
    neg = torch.randn(4, 77, 64, generator=g)
    t = torch.tensor(500)
    with torch.no_grad():
        ip = ip_pipe.prepare(models, s, plan(s), cfg=True)
        theirs.image_encoder, theirs.feature_extractor = ip.adapter.encoder, ip.adapter.processor
        theirs.set_ip_adapter_scale(0.8)
        embeds = theirs.prepare_ip_adapter_image_embeds(read_image(kit["red"]), None, "cpu", 1, True)
        ref = theirs.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([neg, text]),
                          added_cond_kwargs={"image_embeds": embeds}).sample
        ref = ref[:1] + 2.0 * (ref[1:] - ref[:1])
        with ipadapter.installed(pipe.unet, ip.adapter):
            ipadapter.set_scale(ip.adapter, 0.8)
            mine = predict(pipe.unet, x, t, text, neg, 2.0, (), (ip.cond, ip.uncond))
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    assert not any(hasattr(p, "to_k_ip") for p in pipe.unet.attn_processors.values())


def test_keyframe_images_blend_like_prompts(kit, tiny_models, tmp_path):
    from lcmvideo.models import ipadapter
    from lcmvideo.pipeline import ipadapter as ip_pipe
    from lcmvideo.schedule import IpAdapterSpec, finish, plan

    folder = tmp_path / "keys"
    folder.mkdir()
    write_image(folder / "0000.png", (220, 30, 30))
    write_image(folder / "0004.png", (30, 30, 220))
    s = finish(render_settings(frames=8, ip_adapter=IpAdapterSpec(str(kit["bin"]), str(folder))))
    with torch.no_grad():
        ip = ip_pipe.prepare(tiny_models, s, plan(s), cfg=False)
        feats, _ = ip_pipe.encode(ip.adapter, [ip_pipe.read_image(folder / n) for n in ("0000.png", "0004.png")])
        mid = ip.adapter.proj([(0.5 * feats[0] + 0.5 * feats[1])[None, None]])[0]
        first = ip.adapter.proj([feats[:1, None]])[0]
    torch.testing.assert_close(ip.cond[2], mid[0])
    torch.testing.assert_close(ip.cond[0], first[0])
    torch.testing.assert_close(ip.cond[4], ip.cond[7])  # the last image holds
    assert not torch.allclose(ip.cond[0], ip.cond[4])
    assert isinstance(ip.adapter, ipadapter.IpAdapter)


def test_scale_travels_per_window(kit, tiny_models, monkeypatch):
    from lcmvideo.models import ipadapter
    from lcmvideo.schedule import Context, IpAdapterSpec, Settings, finish, plan

    s = finish(Settings(keyframes={"0": {"prompt": "a red circle", "ip_adapter_scale": 0.0},
                                   "-1": {"prompt": "a red circle", "ip_adapter_scale": 1.0}},
                        frames=12, steps=1, seed=1, context=Context(8, 4),
                        ip_adapter=IpAdapterSpec(str(kit["bin"]), str(kit["red"]), 0.5)))
    rows = plan(s)
    assert [round(r.params["ip_adapter_scale"], 3) for r in rows][:3] == [0.0, round(1 / 11, 3), round(2 / 11, 3)]
    seen = []
    real = ipadapter.set_scale
    monkeypatch.setattr(ipadapter, "set_scale", lambda a, v: (seen.append(round(v, 4)), real(a, v)))
    render(tiny_models, s)
    per = [r.params["ip_adapter_scale"] for r in rows]
    windows = [range(0, 8), range(4, 12)]
    assert seen[1:] == [round(sum(per[i] for i in w) / 8, 4) for w in windows]


def test_single_file_encoder_and_models_dir(kit, tiny_models, tmp_path, monkeypatch):
    """A ComfyUI clip_vision file (transformers' layout, no config) found in models/clip_vision."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    from lcmvideo.models import ipadapter, resolve_ip_adapter
    from lcmvideo.schedule import IpAdapterSpec

    root = tmp_path / "ComfyUI"
    (root / "models" / "clip_vision").mkdir(parents=True)
    (root / "models" / "ipadapter").mkdir(parents=True)
    enc = CLIPVisionModelWithProjection.from_pretrained(str(kit["encoder"]))
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()},
              str(root / "models" / "clip_vision" / "CLIP-ViT-tiny.safetensors"))
    (root / "models" / "ipadapter" / "ip-adapter_tiny.safetensors").write_bytes(kit["safetensors"].read_bytes())
    spec = tiny_models.spec
    monkeypatch.setattr(spec, "models_dir", root)
    ref, encoder = resolve_ip_adapter(IpAdapterSpec("ip-adapter_tiny", "x.png"), spec)
    assert ref.path.parent.name == "ipadapter" and encoder.path.name == "CLIP-ViT-tiny.safetensors"
    with pytest.raises(Exception, match="width 32 without its config"):
        ipadapter._encoder(encoder, torch.float32, "cpu")
    monkeypatch.setitem(ipadapter.ENCODER_HEADS, 32, (4, "gelu"))
    model, _ = ipadapter._encoder(encoder, torch.float32, "cpu")
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).image_embeds, enc(pixels).image_embeds)


def test_vit_h_config_from_shapes():
    from lcmvideo.models.ipadapter import encoder_config

    shapes = {"vision_model.embeddings.patch_embedding.weight": [1280, 3, 14, 14],
              "vision_model.embeddings.position_embedding.weight": [257, 1280],
              "vision_model.encoder.layers.0.mlp.fc1.weight": [5120, 1280], "visual_projection.weight": [1024, 1280],
              **{f"vision_model.encoder.layers.{i}.layer_norm1.weight": [1280] for i in range(32)}}
    # h94/IP-Adapter models/image_encoder/config.json (OpenCLIP ViT-H/14)
    assert encoder_config(shapes) == dict(hidden_size=1280, patch_size=14, image_size=224, num_hidden_layers=32,
                                          num_attention_heads=16, hidden_act="gelu", intermediate_size=5120,
                                          projection_dim=1024, layer_norm_eps=1e-5)


def test_schedule_and_flags():
    from lcmvideo.errors import LcmvideoError
    from lcmvideo.schedule import from_source, from_text, parse_ip_image

    s = from_text("prompt: a cat\nip_adapter: {model: a.bin, image: face.png, scale: 0.6}\n"
                  "keyframes_unused: 1\n".replace("keyframes_unused: 1\n", ""), "s.yaml")
    assert s.ip_adapter.scale == 0.6 and s.ip_adapter.encoder is None
    assert parse_ip_image("face.png:0.7") == ("face.png", 0.7)
    assert parse_ip_image("C:/x.png") == ("C:/x.png", None)
    with pytest.raises(LcmvideoError, match="--ip-image: 'face.png:x': the scale after ':' must be a number"):
        parse_ip_image("face.png:x")
    with pytest.raises(LcmvideoError, match="ip_adapter.scale"):
        from_text("prompt: a\nip_adapter: {model: a.bin, image: f.png, scale: 9}\n", "s.yaml")
    with pytest.raises(LcmvideoError, match="missing key 'image'"):
        from_text("prompt: a\nip_adapter: {model: a.bin}\n", "s.yaml")
    with pytest.raises(LcmvideoError, match="--ip-image: needs --ip-adapter"):
        from_source(None, prompt="a", ip_image="f.png")
    s = from_source(s, ip_image="other.png:0.3")
    assert (s.ip_adapter.image, s.ip_adapter.scale, s.ip_adapter.model) == ("other.png", 0.3, "a.bin")
    w = from_text("keyframes: {0: {prompt: a, ip_adapter_scale: 0.5}}\n", "s.yaml").warnings
    assert any("ip_adapter_scale: has no effect without ip_adapter" in x for x in w)


class Result:
    def __init__(self, r):
        self.returncode, self.stderr = r.exit_code, r.stderr


def _cli(*args, cwd=None):
    """The CLI in this process (as tests/test_cli.py runs it): what a user's shell would see."""
    from click.testing import CliRunner

    from lcmvideo.cli import cli

    return Result(CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False))


def test_cli_end_to_end_and_sidecar_rerenders(kit, tmp_path):
    from lcmvideo.output import video

    out = tmp_path / "ip.mp4"
    r = _cli("render", "-p", "a red circle", "--frames", "2", "--steps", "1", "--seed", "3",
             "--ip-adapter", kit["bin"], "--ip-image", f"{kit['red']}:0.7", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads(video.sidecar_path(out).read_text())
    assert meta["models"]["ip_adapter"]["layout"] == "ip-adapter"
    assert meta["models"]["ip_adapter"]["source"] == "found beside ip-adapter_tiny.bin"
    side = meta["settings"]["ip_adapter"]
    assert side == {"model": str(kit["bin"].resolve()), "image": str(kit["red"].resolve()), "scale": 0.7,
                    "encoder": str(kit["encoder"].resolve())}
    again = tmp_path / "again.mp4"
    r = _cli("render", video.sidecar_path(out), "-o", again, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = video.read(out)[0], video.read(again)[0]
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_one_line_exit_2(kit, tmp_path, tiny_dir):
    from diffusers import UNet2DConditionModel

    lora = tiny_dir / "lcm_lora"
    lora_file = next(lora.glob("*.safetensors"))
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    # an SDXL-width adapter (cross-attention 2048), and one whose encoder is of another width
    xl_unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=2048,
                                   attention_head_dim=8, sample_size=8)
    xl = write_adapter(ip_state_dict(xl_unet, image_width=1280), tmp_path / "ip-adapter_sdxl.safetensors")
    wide = write_adapter(ip_state_dict(kit["unet"], image_width=48), tmp_path / "ip-adapter_wide.safetensors")
    base = ["render", "-p", "a red circle", "--frames", "2", "--steps", "1", "-o", tmp_path / "x.mp4"]
    cases = [
        (["--ip-adapter", kit["bin"], "--ip-image", tmp_path / "missing.png"], "--ip-image: ", "no such image"),
        (["--ip-adapter", kit["bin"], "--ip-image", notes], "--ip-image: ", "not an image"),
        (["--ip-adapter", kit["bin"], "--ip-image", fake], "--ip-image: ", "not a readable image"),
        (["--ip-adapter", lora_file, "--ip-image", kit["red"]], "--ip-adapter: ", "not a ip_adapter model"),
        (["--ip-adapter", tmp_path / "none.bin", "--ip-image", kit["red"]], "--ip-adapter: ", "is not a file"),
        (["--ip-adapter", xl, "--ip-image", kit["red"]], "--ip-adapter: ", "SDXL IP-Adapter"),
        (["--ip-adapter", wide, "--ip-image", kit["red"], "--ip-encoder", kit["encoder"]], "--ip-encoder: ",
         "reads image features of width 48"),
        (["--ip-adapter", wide, "--ip-image", kit["red"]], "--ip-adapter: ", "no CLIP image encoder found"),
        (["--ip-image", kit["red"]], "--ip-image: ", "needs --ip-adapter"),
        (["--ip-adapter", kit["bin"]], "--ip-adapter: ", "needs --ip-image"),
    ]
    for extra, start, words in cases:
        r = _cli(*base, *extra, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (extra, r.stderr)
        assert lines[0].startswith("lcmvideo: error: " + start) and words in lines[0], lines[0]
        assert "Error" not in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_a_missing_adapter_is_refused_before_any_model_loads(kit, tmp_path, monkeypatch):
    from lcmvideo import models
    from lcmvideo.output import video

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the missing IP-Adapter was refused")

    monkeypatch.setattr(models, "load", no_load)
    missing = tmp_path / "none.bin"
    sched = tmp_path / "s.yaml"
    sched.write_text(f"prompt: a red circle\nframes: 2\nsteps: 1\n"
                     f"ip_adapter: {{model: {missing}, image: {kit['red']}}}\n")
    clip = tmp_path / "in.mp4"
    video.write(np.full((2, 64, 64, 3), 128, np.uint8), clip, 8.0, "mp4", None)
    flags = ["--ip-adapter", missing, "--ip-image", kit["red"]]
    for args, key in [(["render", "-p", "a red circle", "--frames", "2", *flags], "--ip-adapter"),
                      (["render", sched], "ip_adapter.model"),
                      (["restyle", clip, "-p", "a red circle", *flags], "--ip-adapter")]:
        r = _cli(*args, "-o", tmp_path / "x.mp4", cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"lcmvideo: error: {key}: '{missing}' is not a file"), lines[0]
    assert not (tmp_path / "x.mp4").exists()


def test_restyle_frames_mode_refuses_and_animatediff_takes_it(kit, tiny_models, tmp_path):
    from lcmvideo.api import Session
    from lcmvideo.errors import LcmvideoError
    from lcmvideo.output import video

    clip = tmp_path / "in.mp4"
    video.write(np.full((4, 64, 64, 3), 128, np.uint8), clip, 8.0, "mp4", None)
    session = Session()
    flags = dict(prompt="a red circle", seed=1, steps=2, ip_adapter=str(kit["bin"]), ip_image=str(kit["red"]))
    with pytest.raises(LcmvideoError, match="frames mode runs the image UNet"):
        session.restyle_to_file(clip, tmp_path / "out.mp4", **flags)
    from lcmvideo.pipeline import restyle

    out = session.restyle_to_file(clip, tmp_path / "out.mp4", options=restyle.Options(mode="animatediff",
                                                                                     report=False), **flags)
    assert video.read(out)[0].shape == (4, 64, 64, 3)


@pytest.mark.parametrize("kind", ["bin", "plus"])
def test_loading_initialises_nothing_at_random_and_leaves_the_unet_as_it_was(kit, tiny_models, real_inits, kind):
    """diffusers' loader runs with its no_init_weights (only layer norms' ones and zeros are set);
    the encoder is built on the meta device."""
    from lcmvideo.models import ipadapter, resolve_ip_adapter
    from lcmvideo.schedule import IpAdapterSpec

    unet = tiny_models.pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    ref, enc = resolve_ip_adapter(IpAdapterSpec(str(kit[kind]), str(kit["red"])), tiny_models.spec)
    real_inits.clear()
    adapter = ipadapter.load(unet, ref, enc, "float32", "cpu")
    assert [r for r in real_inits if r[0] not in ("ones_", "zeros_") or len(r[1]) != 1] == []
    assert len(adapter.ip_processors()) == len(list(_cross_attentions(unet)))
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before and unet.encoder_hid_proj is None
