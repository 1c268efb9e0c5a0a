"""The layout exporters in layouts.py are exact inverses of diffusers' own readers.

Every exported layout is read back with diffusers (from_single_file, the converters in
diffusers.loaders.single_file_utils, lora_state_dict / load_lora_weights, huggingface_hub's
snapshot_download) and must reproduce the tiny family's tensors exactly."""

import huggingface_hub
import layouts
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_ldm_clip_checkpoint,
    create_diffusers_clip_model_from_ldm,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file
from transformers import CLIPTextModel

LOCAL = dict(local_files_only=True)


def assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    bad = [k for k in want if got[k].is_meta or not torch.equal(got[k], want[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one thread is as fast, and far faster on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def parts(tiny_dir):
    return (UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet", **LOCAL),
            AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae", **LOCAL),
            CLIPTextModel.from_pretrained(tiny_dir, subfolder="text_encoder", **LOCAL))


@pytest.fixture(scope="session")
def ldm(parts):
    return layouts.to_ldm_checkpoint(*parts)


@pytest.fixture(scope="session")
def peft_lora(tiny_dir):
    return load_file(str(tiny_dir / "lcm_lora" / "pytorch_lora_weights.safetensors"))


# ---------------------------------------------------------------- LDM single file


def test_ldm_checkpoint_layout(ldm, parts):
    unet, vae, te = parts
    prefixes = (layouts.LDM_UNET_PREFIX, layouts.LDM_VAE_PREFIX, layouts.LDM_CLIP_PREFIX)
    assert all(k.startswith(prefixes) for k in ldm)
    n_te = len(te.state_dict()) + 1  # + position_ids, as real SD1.5 files
    assert [sum(k.startswith(p) for k in ldm) for p in prefixes] == [
        len(unet.state_dict()), len(vae.state_dict()), n_te]
    # names straight from v1-5-pruned-emaonly: the tiny family has one layer per block, SD1.5 two,
    # so the indices differ but every kind of entry is there
    u, v, c = prefixes
    for k in [u + "time_embed.0.weight", u + "input_blocks.0.0.weight", u + "input_blocks.1.0.in_layers.0.weight",
              u + "input_blocks.1.1.proj_in.weight", u + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
              u + "input_blocks.2.0.op.weight", u + "input_blocks.5.0.skip_connection.weight",
              u + "middle_block.1.norm.weight", u + "middle_block.2.emb_layers.1.bias",
              u + "output_blocks.1.1.conv.weight", u + "output_blocks.3.2.conv.weight",
              u + "output_blocks.7.1.proj_out.weight", u + "out.2.weight",
              v + "encoder.down.0.block.0.conv1.weight", v + "encoder.down.0.downsample.conv.weight",
              v + "decoder.up.3.block.1.conv2.weight", v + "decoder.up.3.upsample.conv.weight",
              v + "decoder.mid.attn_1.proj_out.weight", v + "quant_conv.weight",
              c + "text_model.embeddings.position_ids", c + "text_model.embeddings.position_embedding.weight",
              c + "text_model.encoder.layers.1.self_attn.q_proj.weight", c + "text_model.final_layer_norm.weight"]:
        assert k in ldm, k
    c = vae.config.block_out_channels[-1]
    for side in ("encoder", "decoder"):
        for leaf in ("q", "k", "v", "proj_out"):
            assert ldm[f"first_stage_model.{side}.mid.attn_1.{leaf}.weight"].shape == (c, c, 1, 1)
    assert ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    # diffusers' SD1.5 key exists only with two layers per block; "v1" is also its fall-through answer
    assert layouts.SD15_V1_KEY not in ldm
    assert infer_diffusers_model_type(ldm) == "v1"


def test_ldm_unet_vae_round_trip(ldm, parts, tiny_dir):
    unet, vae, _ = parts
    kw = dict(config=str(tiny_dir), **LOCAL)
    assert_same(UNet2DConditionModel.from_single_file(ldm, subfolder="unet", **kw).state_dict(), unet.state_dict())
    assert_same(AutoencoderKL.from_single_file(ldm, subfolder="vae", **kw).state_dict(), vae.state_dict())


def _unwrapped(sd: dict, like: dict) -> dict:
    """diffusers' reader keeps `text_model.`; transformers >= 5.6's flattened CLIPTextModel has none."""
    if any(k.startswith("text_model.") for k in like):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def test_ldm_clip_round_trip(ldm, parts, tiny_dir):
    te_sd = parts[2].state_dict()
    back = convert_ldm_clip_checkpoint(ldm)
    assert all(k.startswith("text_model.") for k in back)  # the real files' names
    assert torch.equal(back.pop("text_model.embeddings.position_ids"), torch.arange(77)[None])
    assert_same(_unwrapped(back, te_sd), te_sd)
    no_ids = layouts.to_ldm_checkpoint(*parts, position_ids=False)
    assert_same(_unwrapped(convert_ldm_clip_checkpoint(no_ids), te_sd), te_sd)
    # diffusers' own CLIP builder for single files (what from_single_file pipelines use)
    te = create_diffusers_clip_model_from_ldm(CLIPTextModel, ldm, subfolder="text_encoder", config=str(tiny_dir),
                                              **LOCAL)
    assert_same(te.state_dict(), te_sd)


# SD1.5's own shape at a twentieth of its width (two layers per block, attention on the first three
# levels), and an odd one: three layers, three levels, attention on the inner two, linear projections
UNETS = {
    "sd15-shape": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=2, norm_num_groups=8,
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                       cross_attention_dim=32, attention_head_dim=8, sample_size=8),
    "odd": dict(block_out_channels=(16, 32, 32), layers_per_block=3, norm_num_groups=8,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=2, use_linear_projection=True,
                cross_attention_dim=24, attention_head_dim=4, sample_size=8),
}


@pytest.mark.parametrize("name", list(UNETS))
def test_unet_exporter_is_generic_in_the_config(name, tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNETS[name])
    unet.save_config(tmp_path / "unet")
    sd = layouts.unet_to_ldm(unet.state_dict(), dict(unet.config))
    if name == "sd15-shape":  # with SD's layer count, the key diffusers detects SD1.5 by is there
        assert layouts.SD15_V1_KEY in sd and infer_diffusers_model_type(sd) == "v1"
        n_in = 1 + max(int(k.split(".")[3]) for k in sd if ".input_blocks." in k)
        n_out = 1 + max(int(k.split(".")[3]) for k in sd if ".output_blocks." in k)
        assert (n_in, n_out) == (12, 12)  # as SD1.5: input_blocks.0-11, output_blocks.0-11
    back = UNet2DConditionModel.from_single_file(sd, config=str(tmp_path), subfolder="unet", **LOCAL)
    assert_same(back.state_dict(), unet.state_dict())


def test_vae_exporter_with_sd15_layers(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), layers_per_block=2, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    vae.save_config(tmp_path / "vae")
    sd = layouts.vae_to_ldm(vae.state_dict(), dict(vae.config))
    assert "first_stage_model.decoder.up.0.block.2.conv1.weight" in sd  # layers + 1 resnets per decoder level
    back = AutoencoderKL.from_single_file(sd, config=str(tmp_path), subfolder="vae", **LOCAL)
    assert_same(back.state_dict(), vae.state_dict())


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_ldm_single_file_writer(tiny_dir, ldm, parts, tmp_path, suffix):
    path = layouts.write_ldm_single_file(tiny_dir, tmp_path / f"tiny_sd15{suffix}")
    if suffix == ".ckpt":
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert list(raw) == ["state_dict"]
        assert_same(raw["state_dict"], ldm)
    else:
        assert_same(load_file(str(path)), ldm)
    # diffusers reads the file itself too, given the tiny configs
    unet = UNet2DConditionModel.from_single_file(str(path), config=str(tiny_dir), subfolder="unet", **LOCAL)
    assert_same(unet.state_dict(), parts[0].state_dict())


# ---------------------------------------------------------------- original AnimateDiff


def test_animatediff_original_round_trip(tiny_dir, tmp_path):
    adapter = MotionAdapter.from_pretrained(tiny_dir / "motion_adapter", **LOCAL)
    want = adapter.state_dict()
    sd = layouts.to_animatediff_original(want)
    assert infer_diffusers_model_type(sd) == "animatediff_v2"
    assert all(".temporal_transformer." in k for k in sd)
    tb = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
    for k in [tb + "attention_blocks.0.to_q.weight", tb + "attention_blocks.1.to_out.0.bias", tb + "norms.0.weight",
              tb + "norms.1.bias", tb + "ff_norm.weight", tb + "ff.net.0.proj.weight",
              "up_blocks.3.motion_modules.1.temporal_transformer.proj_out.weight",
              "mid_block.motion_modules.0.temporal_transformer.norm.bias"]:
        assert k in sd, k
    pes = {k: v for k, v in sd.items() if k.endswith(".pos_encoder.pe")}
    n_blocks = sum(k.endswith("pos_embed.pe") for k in want)
    assert len(pes) == 2 * n_blocks  # one table per attention block, as the originals
    for k, v in pes.items():
        channels = sd[k.split(".transformer_blocks.")[0] + ".proj_in.weight"].shape[0]
        assert v.shape == (1, 32, channels)
        assert torch.allclose(v, layouts.sinusoid(32, channels), atol=1e-6)

    back = convert_animatediff_checkpoint_to_diffusers(sd)
    assert_same(back, {k: v for k, v in want.items() if not k.endswith("pos_embed.pe")})  # diffusers drops pe
    # and diffusers' single-file loader, from a written file
    path = layouts.write_animatediff_original(tiny_dir / "motion_adapter", tmp_path / "mm_tiny_v2.ckpt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert_same(raw, sd)  # a flat dict, as mm_sd_v15_v2.ckpt
    loaded = MotionAdapter.from_single_file(str(path), config=str(tiny_dir / "motion_adapter"), **LOCAL)
    assert_same(loaded.state_dict(), want)


@pytest.mark.parametrize("variant", ["v1", "v2", "v3"])
def test_animatediff_generations(variant, tmp_path):
    adapter = layouts.motion_adapter(variant)
    want = adapter.state_dict()
    sd = layouts.to_animatediff_original(want, variant=variant)
    assert infer_diffusers_model_type(sd) == f"animatediff_{variant}"
    assert any(k.startswith("mid_block.") for k in sd) == (variant == "v2")
    pe = sd["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
            "attention_blocks.0.pos_encoder.pe"]
    assert pe.shape == (1, 24 if variant == "v1" else 32, 32)
    assert_same(convert_animatediff_checkpoint_to_diffusers(sd),
                {k: v for k, v in want.items() if not k.endswith("pos_embed.pe")})
    path = layouts.write_animatediff_original(adapter, tmp_path / f"mm_{variant}.safetensors", variant=variant)
    assert infer_diffusers_model_type(load_file(str(path))) == f"animatediff_{variant}"
    others = [v for v in layouts.MOTION_GENERATIONS if v != variant and
              layouts.MOTION_GENERATIONS[v] != layouts.MOTION_GENERATIONS[variant]]
    for other in others:
        with pytest.raises(ValueError, match=f"AnimateDiff {other} file needs"):
            layouts.to_animatediff_original(want, variant=other)


# ---------------------------------------------------------------- kohya LoRA


def test_kohya_lora_layout(peft_lora):
    k = layouts.to_kohya_lora(peft_lora)
    n = len(peft_lora) // 2
    assert len(k) == 3 * n
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert torch.equal(k[f"{name}.lora_down.weight"],
                       peft_lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight"])
    assert torch.equal(k[f"{name}.lora_up.weight"],
                       peft_lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight"])
    assert "lora_unet_up_blocks_1_resnets_0_time_emb_proj.alpha" in k
    alphas = [v for key, v in k.items() if key.endswith(".alpha")]
    assert len(alphas) == n and all(a.ndim == 0 and a.item() == 4.0 for a in alphas)
    alphas8 = [v for key, v in layouts.to_kohya_lora(peft_lora, alpha=8).items() if key.endswith(".alpha")]
    assert len(alphas8) == n and all(a.item() == 8.0 for a in alphas8)
    for te_name in ("text_model.encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.q_proj"):
        te = layouts.to_kohya_lora({f"text_encoder.{te_name}.lora_A.weight": torch.ones(2, 3),
                                    f"text_encoder.{te_name}.lora_B.weight": torch.ones(3, 2)})
        assert sorted(te) == ["lora_te_text_model_encoder_layers_0_self_attn_q_proj." + s
                              for s in ("alpha", "lora_down.weight", "lora_up.weight")]

    # diffusers' reader accepts it: every pair back under unet., alpha = rank
    sd, alphas = StableDiffusionPipeline.lora_state_dict(dict(k))
    assert len(sd) == len(peft_lora) and all(key.startswith("unet.") for key in sd)
    assert len(alphas) == n and set(alphas.values()) == {4.0}


def _te_lora(te, rank=4):
    """A text-encoder LoRA named as real files are (text_encoder.text_model.encoder.layers...)."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, mod in te.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            name = name if name.startswith("text_model.") else "text_model." + name
            out[f"text_encoder.{name}.lora_A.weight"] = torch.randn(rank, mod.in_features, generator=g) * 0.05
            out[f"text_encoder.{name}.lora_B.weight"] = torch.randn(mod.out_features, rank, generator=g) * 0.05
    return out


def test_kohya_lora_applies_like_peft(tiny_dir, peft_lora):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, **LOCAL)
    peft = {**peft_lora, **_te_lora(pipe.text_encoder)}  # a text-encoder part too, as many civitai LoRAs
    half = {k: v * 0.5 if ".lora_B." in k else v for k, v in peft.items()}
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([499])
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids

    @torch.no_grad()
    def outputs():
        ctx = pipe.text_encoder(ids)[0]
        return ctx, pipe.unet(x, t, ctx).sample

    base = outputs()
    for name, sd in [("peft", peft), ("kohya", layouts.to_kohya_lora(peft)),
                     ("peft_half", half), ("kohya_alpha2", layouts.to_kohya_lora(peft, alpha=2))]:
        pipe.load_lora_weights(dict(sd), adapter_name=name)
    got = {}
    for name in ("peft", "kohya", "peft_half", "kohya_alpha2"):
        pipe.set_adapters(name)
        got[name] = outputs()
    for a, b in [("peft", "kohya"), ("peft_half", "kohya_alpha2")]:  # alpha 2 at rank 4: half the update
        for i in (0, 1):
            torch.testing.assert_close(got[b][i], got[a][i], atol=1e-5, rtol=0)
    for i in (0, 1):  # and the LoRA does something
        assert (got["peft"][i] - base[i]).abs().max() > 1e-3
        assert (got["peft"][i] - got["peft_half"][i]).abs().max() > 1e-4


def test_kohya_lora_writer(tiny_dir, peft_lora, tmp_path):
    path = layouts.write_kohya_lora(tiny_dir / "lcm_lora", tmp_path / "lcm_kohya.safetensors")
    assert_same(load_file(str(path)), layouts.to_kohya_lora(peft_lora))


# ---------------------------------------------------------------- Hugging Face cache, ControlNet


@pytest.mark.parametrize("blobs", [False, True])
def test_hf_cache(tiny_dir, tmp_path, blobs):
    hub = tmp_path / "hub"
    snap = layouts.make_hf_cache(hub, "someone/tiny-sd15", tiny_dir, blobs=blobs)
    repo = hub / "models--someone--tiny-sd15"
    commit = (repo / "refs" / "main").read_text()
    assert len(commit) == 40 and int(commit, 16) >= 0 and snap == repo / "snapshots" / commit
    got = huggingface_hub.snapshot_download("someone/tiny-sd15", cache_dir=str(hub), **LOCAL)
    assert got == str(snap)
    assert (snap / "unet" / "diffusion_pytorch_model.safetensors").is_symlink() == blobs
    unet = UNet2DConditionModel.from_pretrained("someone/tiny-sd15", subfolder="unet", cache_dir=str(hub), **LOCAL)
    assert_same(unet.state_dict(), UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet").state_dict())
    if blobs:  # a cache huggingface_hub's own scanner accepts
        info = huggingface_hub.scan_cache_dir(hub)
        assert not info.warnings and [r.repo_id for r in info.repos] == ["someone/tiny-sd15"]


def test_controlnet_ldm_round_trip(tiny_dir, tmp_path):
    cn = ControlNetModel.from_pretrained(tiny_dir / "controlnet", **LOCAL)
    sd = layouts.controlnet_to_ldm(cn.state_dict(), dict(cn.config))
    assert infer_diffusers_model_type(sd) == "controlnet"
    assert all(k.startswith("control_model.") for k in sd) and "control_model.input_hint_block.14.weight" in sd
    back = ControlNetModel.from_single_file(sd, config=str(tiny_dir / "controlnet"), **LOCAL)
    assert_same(back.state_dict(), cn.state_dict())
