"""The embedded default: a tiny model family in SD1.5's structure, loaded like a user's models.

Normally the shapes-world family (64x64 coloured shapes) trained by training/shapes/train.py
and shipped as package data (fp16 safetensors, diffusers layout). Its random twin, built here
from fixed seeds with the same classes and configs, serves the tests (LCMVIDEO_EMBEDDED=random)
and any install without the shipped weights; its pictures are noise-like.

The family's architecture lives here, beside the model, and the training imports it.
"""

import json
import os
import shutil
from pathlib import Path

from ..paths import DATA, cache_dir

VERSION = "tiny-v3"  # the random twin; bump when any config or the build recipe changes
SHAPES_VERSION = "shapes-v1"  # the trained family shipped in lcmvideo/data/shapes
SEED = 20261122

# The architecture of the trained family and its random twin, so either can stand in for the other.
VAE = dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64),
           layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8)
TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64)
MOTION = dict(block_out_channels=UNET["block_out_channels"], motion_layers_per_block=1,
              motion_mid_block_layers_per_block=1, motion_num_attention_heads=8, motion_norm_num_groups=32,
              motion_max_seq_length=32, use_motion_mid_block=True)
CONTROLNET_EMBED = (16, 16, 32, 32)
# the real lcm-lora-sdv1-5's targets, at a small rank
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
LORA_RANK = 4  # the random twin's LCM-style LoRA


def shipped() -> Path:
    return DATA / "shapes"


def has_shipped() -> bool:
    """Whether this install carries the trained shapes weights."""
    return (shipped() / "model_index.json").exists()


def use_shipped() -> bool:
    """The trained shapes family, unless LCMVIDEO_EMBEDDED=random asks for the random twin."""
    return os.environ.get("LCMVIDEO_EMBEDDED", "shapes") != "random" and has_shipped()


def version() -> str:
    return SHAPES_VERSION if use_shipped() else VERSION


def tiny_dir() -> Path:
    return cache_dir() / VERSION


def ensure() -> Path:
    """The embedded family's folder: the shipped shapes weights, or the random twin built on first use."""
    if use_shipped():
        return shipped()
    d = tiny_dir()
    if not (d / "done").exists():
        build(d)
    return d


def sampling_defaults() -> dict:
    """Sampling settings the embedded family was trained for (sampling.json beside its weights)."""
    f = ensure() / "sampling.json"
    return json.loads(f.read_text()) if f.exists() else {}


def build(out: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, LCMScheduler, MotionAdapter, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from .libraries import configure
    from .tokenizer import tokenizer_dir

    configure()
    tmp = out.with_name(out.name + f".build{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET)
    unet.save_pretrained(tmp / "unet")
    torch.manual_seed(SEED + 1)
    AutoencoderKL(**VAE).save_pretrained(tmp / "vae")
    torch.manual_seed(SEED + 2)
    CLIPTextModel(CLIPTextConfig(**TEXT)).save_pretrained(tmp / "text_encoder")
    shutil.copytree(tokenizer_dir(), tmp / "tokenizer")
    LCMScheduler.from_pretrained(DATA / "sd15", subfolder="scheduler").save_pretrained(tmp / "scheduler")
    torch.manual_seed(SEED + 3)
    adapter = MotionAdapter(**MOTION)
    with torch.no_grad():  # untrained modules start near identity; give them a visible effect
        for name, p in adapter.named_parameters():
            if name.endswith("proj_out.weight"):
                p.normal_(0, 0.02)
    adapter.save_pretrained(tmp / "motion_adapter")
    torch.manual_seed(SEED + 4)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBED)
    with torch.no_grad():  # zero-initialised outputs would make an untrained ControlNet a no-op
        for name, p in controlnet.named_parameters():
            if name.startswith("controlnet_cond_embedding") and p.ndim == 4:
                torch.nn.init.kaiming_normal_(p)  # keep the image's signal alive through the small convs
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.normal_(0, 0.05)
        controlnet.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.1)
    controlnet.save_pretrained(tmp / "controlnet")

    torch.manual_seed(SEED + 5)
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)
    lora = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    (tmp / "lcm_lora").mkdir()
    save_file(lora, tmp / "lcm_lora" / "pytorch_lora_weights.safetensors")

    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "LCMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }, indent=2))
    (tmp / "README.md").write_text(
        "lcmvideo's embedded default: a tiny UNTRAINED model family in SD1.5's structure, built from fixed\n"
        "seeds so the tool runs anywhere in seconds. Its output is not meaningful imagery.\n")
    (tmp / "done").write_text(VERSION)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
