"""Write the tiny family out in the layouts users download: LDM single file, original
AnimateDiff motion module, kohya LoRA, Hugging Face cache. The inverses of diffusers'
own converters, so the project's loaders can be tested on every path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
          ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]


def _move(src: dict, dst: dict, d_prefix: str, l_prefix: str, renames=()):
    for k in [k for k in src if k.startswith(d_prefix + ".")]:
        rest = k[len(d_prefix) + 1:]
        for a, b in renames:
            if rest.startswith(b + "."):
                rest = a + rest[len(b):]
                break
        dst[l_prefix + "." + rest] = src.pop(k)


def _down_and_mid(sd: dict, out: dict, config: dict):
    """The part of the LDM layout a UNet and a ControlNet share: time embedding, input and middle blocks."""
    layers = config["layers_per_block"]
    n = len(config["block_out_channels"])
    attn = ["CrossAttn" in t for t in config["down_block_types"]]
    _move(sd, out, "time_embedding.linear_1", "time_embed.0")
    _move(sd, out, "time_embedding.linear_2", "time_embed.2")
    _move(sd, out, "conv_in", "input_blocks.0.0")
    for i in range(n):
        for j in range(layers):
            b = 1 + i * (layers + 1) + j
            _move(sd, out, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{b}.0", RESNET)
            if attn[i]:
                _move(sd, out, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{b}.1")
        if i < n - 1:
            _move(sd, out, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (layers + 1) + layers}.0.op")
    _move(sd, out, "mid_block.resnets.0", "middle_block.0", RESNET)
    _move(sd, out, "mid_block.attentions.0", "middle_block.1")
    _move(sd, out, "mid_block.resnets.1", "middle_block.2", RESNET)


def unet_to_ldm(sd: dict, config: dict) -> dict:
    sd, out = dict(sd), {}
    layers = config["layers_per_block"]
    n = len(config["block_out_channels"])
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    _down_and_mid(sd, out, config)
    _move(sd, out, "conv_norm_out", "out.0")
    _move(sd, out, "conv_out", "out.2")
    for i in range(n):
        for j in range(layers + 1):
            b = i * (layers + 1) + j
            _move(sd, out, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{b}.0", RESNET)
            if up_attn[i]:
                _move(sd, out, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{b}.1")
        if i < n - 1:
            b = i * (layers + 1) + layers
            _move(sd, out, f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{b}.{2 if up_attn[i] else 1}.conv")
    assert not sd, f"unmapped UNet keys: {list(sd)[:5]}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


VAE_RESNET = [("nin_shortcut", "conv_shortcut")]
VAE_ATTN = [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]


def vae_to_ldm(sd: dict, config: dict) -> dict:
    sd, out = dict(sd), {}
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    for side in ("encoder", "decoder"):
        _move(sd, out, f"{side}.conv_in", f"{side}.conv_in")
        _move(sd, out, f"{side}.conv_out", f"{side}.conv_out")
        _move(sd, out, f"{side}.conv_norm_out", f"{side}.norm_out")
        _move(sd, out, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", VAE_RESNET)
        _move(sd, out, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", VAE_RESNET)
        attn = {}
        _move(sd, attn, f"{side}.mid_block.attentions.0", "a", VAE_ATTN)
        for k, v in attn.items():  # LDM keeps the attention projections as 1x1 convs
            out[f"{side}.mid.attn_1." + k[2:]] = v[:, :, None, None] if v.ndim == 2 else v
    for i in range(n):
        for j in range(layers):
            _move(sd, out, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET)
        _move(sd, out, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        for j in range(layers + 1):
            _move(sd, out, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", VAE_RESNET)
        _move(sd, out, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
    _move(sd, out, "quant_conv", "quant_conv")
    _move(sd, out, "post_quant_conv", "post_quant_conv")
    assert not sd, f"unmapped VAE keys: {list(sd)[:5]}"
    return {"first_stage_model." + k: v for k, v in out.items()}


def to_ldm_checkpoint(unet, vae, text_encoder) -> dict:
    sd = unet_to_ldm(unet.state_dict(), dict(unet.config))
    sd.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    sd.update({"cond_stage_model.transformer." + k: v for k, v in text_encoder.state_dict().items()
               if not k.endswith("position_ids")})
    return {k: v.contiguous() for k, v in sd.items()}


def write_ldm_single_file(model_dir: Path, path: Path) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    sd = to_ldm_checkpoint(UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet"),
                           AutoencoderKL.from_pretrained(model_dir, subfolder="vae"),
                           CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder"))
    return _save(sd, path)


def _save(sd: dict, path: Path) -> Path:
    path = Path(path)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)  # plain tensors only: loadable with weights_only=True
    return path


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff's PositionalEncoding table (1, length, dim)."""
    pos = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def to_animatediff_original(adapter_sd: dict) -> dict:
    """diffusers MotionAdapter state dict -> original AnimateDiff (mm_sd_v15_v2.ckpt) keys."""
    out = {}
    for k, v in adapter_sd.items():
        head, sep, rest = k.partition(".motion_modules.")
        idx, _, tail = rest.partition(".")
        if tail.startswith("transformer_blocks."):
            tb, _, leaf = tail[len("transformer_blocks."):].partition(".")
            for a, b in ((".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."),
                         (".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1.")):
                leaf = ("." + leaf).replace(a, b)[1:] if ("." + leaf).startswith(a) else leaf
            if leaf == "pos_embed.pe":
                for blk in (0, 1):
                    out[f"{head}{sep}{idx}.temporal_transformer.transformer_blocks.{tb}.attention_blocks.{blk}"
                        f".pos_encoder.pe"] = v.clone()
                continue
            tail = f"transformer_blocks.{tb}.{leaf}"
        out[f"{head}{sep}{idx}.temporal_transformer.{tail}"] = v
    return {k: v.contiguous() for k, v in out.items()}


def write_animatediff_original(adapter, path: Path) -> Path:
    from diffusers import MotionAdapter

    if not isinstance(adapter, MotionAdapter):
        adapter = MotionAdapter.from_pretrained(adapter)
    return _save(to_animatediff_original(adapter.state_dict()), path)


def to_kohya_lora(peft_sd: dict, alpha: float | None = None) -> dict:
    """'unet.<module>.lora_A.weight' -> 'lora_unet_<module_with_underscores>.lora_down.weight' (+ .alpha)."""
    out = {}
    for k, v in peft_sd.items():
        prefix, module = k.split(".", 1)
        module, _, kind = module.rpartition(".lora_")
        kind = kind.split(".")[0]
        name = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[prefix] + module.replace(".", "_")
        out[f"{name}.{'lora_down' if kind == 'A' else 'lora_up'}.weight"] = v
        if kind == "A":
            out[f"{name}.alpha"] = torch.tensor(float(alpha if alpha is not None else v.shape[0]))
    return out


def write_kohya_lora(peft_file: Path, path: Path) -> Path:
    save_file(to_kohya_lora(load_file(str(peft_file))), str(path))
    return Path(path)


def make_hf_cache(cache_root: Path, repo_id: str, src_dir: Path) -> Path:
    """Lay a folder out as the Hugging Face hub cache does: models--org--name/snapshots/<commit>/."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(src_dir, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def controlnet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers ControlNetModel -> the original layout of control_v11p_sd15_*.pth (control_model.*)."""
    sd, out = dict(sd), {}
    _down_and_mid(sd, out, config)
    for k in [k for k in sd if k.startswith("controlnet_down_blocks.")]:
        idx, leaf = k.split(".")[1], k.split(".", 2)[2]
        out[f"zero_convs.{idx}.0.{leaf}"] = sd.pop(k)
    _move(sd, out, "controlnet_mid_block", "middle_block_out.0")
    _move(sd, out, "controlnet_cond_embedding.conv_in", "input_hint_block.0")
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("controlnet_cond_embedding.blocks.")})
    for b in blocks:
        _move(sd, out, f"controlnet_cond_embedding.blocks.{b}", f"input_hint_block.{2 * (b + 1)}")
    _move(sd, out, "controlnet_cond_embedding.conv_out", f"input_hint_block.{2 * (len(blocks) + 1)}")
    assert not sd, f"unmapped ControlNet keys: {list(sd)[:5]}"
    return {"control_model." + k: v.contiguous() for k, v in out.items()}


def write_controlnet_ldm(controlnet_dir: Path, path: Path) -> Path:
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_pretrained(controlnet_dir)
    return _save(controlnet_to_ldm(cn.state_dict(), dict(cn.config)), path)
