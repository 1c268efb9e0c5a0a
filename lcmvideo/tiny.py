"""The embedded default: a tiny, untrained model family in SD1.5's structure.

Built deterministically from fixed seeds with the same diffusers classes as real
checkpoints, saved once in diffusers layout under the cache, and then loaded through the
same loaders as a user's models. It exists so that the first command works on a laptop
CPU in seconds; its pictures are noise-like, not art.
"""

import json
import os
import shutil
from pathlib import Path

from .paths import cache_dir

VERSION = "tiny-v2"  # bump when any config or the build recipe changes
SEED = 20261122

UNET = dict(
    sample_size=8,  # latent side: 64 px images
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=8,
)
VAE = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 32, 64, 64),  # four levels: scale factor 8, as SD1.5
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=8,
)
TEXT = dict(
    vocab_size=49408,  # the real CLIP vocabulary, so the real tokenizer serves both
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)
# AnimateDiff's own values for heads and groups, so the original-layout reader's defaults fit
MOTION = dict(
    block_out_channels=UNET["block_out_channels"],
    motion_layers_per_block=1,
    motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8,
    motion_norm_num_groups=32,
    motion_max_seq_length=32,
    use_motion_mid_block=True,
)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj"]
LORA_RANK = 4


def tiny_dir() -> Path:
    return cache_dir() / VERSION


def ensure() -> Path:
    """The tiny family's folder, built on first use (a few seconds)."""
    d = tiny_dir()
    if not (d / "done").exists():
        build(d)
    return d


def build(out: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, LCMScheduler, MotionAdapter, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import _configure_libraries
    from .paths import DATA
    from .tokenizer import tokenizer_dir

    _configure_libraries()
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
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
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
