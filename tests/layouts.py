"""Write the tiny family out in the layouts users download: LDM single file, original
AnimateDiff motion module, kohya LoRA, Hugging Face hub cache, original ControlNet.

Each exporter is a pure function over a state dict (the exact inverse of the diffusers
converter that reads the layout back, see test_layouts.py) plus a small file writer, so the
project's loaders can be tested on every path without downloading real weights.

  LDM single file     inverse of diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint,
                      convert_ldm_vae_checkpoint and convert_ldm_clip_checkpoint (generalises
                      diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py, which
                      hard-codes SD's two layers per block)
  AnimateDiff         inverse of convert_animatediff_checkpoint_to_diffusers (mm_sd_v15*.ckpt,
                      v3_sd15_mm.ckpt), plus the pos_encoder.pe tables diffusers drops
  kohya LoRA          inverse of diffusers' _convert_non_diffusers_lora_to_diffusers for
                      diffusers-named modules (lcm-lora-sdv1-5, most civitai SD1.5 LoRAs)
  ControlNet          inverse of convert_controlnet_checkpoint (control_v11p_sd15_*.pth)
  VAE single file     vae_to_ldm without (or with) the checkpoint's prefix: vae-ft-mse-840000-ema-pruned
                      .safetensors (flat) and .ckpt ({"state_dict": ...}, or flat)
  TAESD               inverse of diffusers' scripts/convert_tiny_autoencoder_to_diffusers.py:
                      madebyollin's taesd_decoder.pth / taesd_encoder.pth (an nn.Sequential each)
  SparseCtrl          inverse of convert_animatediff_checkpoint_to_diffusers on a SparseControlNetModel
                      (v3_sd15_sparsectrl_rgb.ckpt): the motion modules' keys as AnimateDiff's, with
                      attention_blocks.0.pos_encoder.pe (its one temporal self-attention), the rest as is
  textual inversion   A1111's .pt ({"string_to_param": {"*": vectors}, "name", "step", ...}) and
                      .safetensors ({"emb_params": vectors})
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# ---------------------------------------------------------------- helpers


def _move(src: dict, dst: dict, d_prefix: str, l_prefix: str, renames=()) -> int:
    """Pop every `d_prefix.*` key of src into dst as `l_prefix.*`; renames: (ldm, diffusers) leaf prefixes."""
    n = 0
    for k in sorted(k for k in src if k.startswith(d_prefix + ".")):
        rest = k[len(d_prefix) + 1:]
        for ldm, diffusers in renames:
            if rest.startswith(diffusers + "."):
                rest = ldm + rest[len(diffusers):]
                break
        dst[f"{l_prefix}.{rest}"] = src.pop(k)
        n += 1
    return n


def _finish(sd: dict, what: str) -> None:
    if sd:
        raise ValueError(f"{what}: {len(sd)} keys have no place in the original layout, e.g. {sorted(sd)[:3]}")


def _plain(sd: dict, prefix: str = "") -> dict:
    """Detached, contiguous, unshared tensors (safetensors refuses shared storage)."""
    return {prefix + k: v.detach().clone().contiguous() for k, v in sd.items()}


def _int_layers(config: dict, what: str) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise NotImplementedError(f"{what}: per-block layers_per_block {layers!r} has no LDM layout diffusers reads")
    return layers


def save_weights(sd: dict, path, wrap: bool = True) -> Path:
    """.safetensors via safetensors; anything else (.ckpt/.pt/.pth/.bin) via torch.save, plain tensors
    only, so `torch.load(path, weights_only=True)` opens it. wrap: {"state_dict": sd}, as LDM .ckpt files."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_file(sd, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": sd} if wrap else sd, path)
    return path


# ---------------------------------------------------------------- LDM (CompVis) single file

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."
# the key diffusers' infer_diffusers_model_type looks for first; it exists only with SD's 2 layers per block
SD15_V1_KEY = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"

UNET_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
               ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]
VAE_RESNET = [("nin_shortcut", "conv_shortcut")]
VAE_ATTN = [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]


def _down_and_mid(sd: dict, out: dict, config: dict, what: str) -> None:
    """What a UNet and a ControlNet share: time embedding, conv_in, input blocks, middle block.

    LDM numbers input blocks 1.. : per level `layers` resnet(+attention) blocks, then one
    downsampler block on every level but the last."""
    layers = _int_layers(config, what)
    n = len(config["block_out_channels"])
    attn = ["CrossAttn" in t for t in config["down_block_types"]]
    _move(sd, out, "time_embedding.linear_1", "time_embed.0")
    _move(sd, out, "time_embedding.linear_2", "time_embed.2")
    _move(sd, out, "conv_in", "input_blocks.0.0")
    for i in range(n):
        first = 1 + i * (layers + 1)
        for j in range(layers):
            _move(sd, out, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{first + j}.0", UNET_RESNET)
            if attn[i]:
                _move(sd, out, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{first + j}.1")
        _move(sd, out, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{first + layers}.0.op")
    _move(sd, out, "mid_block.resnets.0", "middle_block.0", UNET_RESNET)
    _move(sd, out, "mid_block.attentions.0", "middle_block.1")
    _move(sd, out, "mid_block.resnets.1", "middle_block.2", UNET_RESNET)


def unet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> `model.diffusion_model.*` (any layers_per_block,
    number of levels, attention pattern). Output blocks: per level layers+1 resnet(+attention) blocks,
    the last of each non-final level also holding the upsampler (index 2 after an attention, else 1)."""
    sd, out = dict(sd), {}
    layers = _int_layers(config, "UNet")
    n = len(config["block_out_channels"])
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    _down_and_mid(sd, out, config, "UNet")
    _move(sd, out, "conv_norm_out", "out.0")
    _move(sd, out, "conv_out", "out.2")
    for i in range(n):
        for j in range(layers + 1):
            b = i * (layers + 1) + j
            _move(sd, out, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{b}.0", UNET_RESNET)
            if up_attn[i]:
                _move(sd, out, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{b}.1")
        last = i * (layers + 1) + layers
        _move(sd, out, f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{last}.{2 if up_attn[i] else 1}.conv")
    _finish(sd, "UNet")
    return _plain(out, LDM_UNET_PREFIX)


def vae_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers AutoencoderKL state dict -> `first_stage_model.*`. The decoder's levels are numbered
    in reverse (up.{n-1} runs first); the mid-block attention projections are 1x1 convs."""
    sd, out = dict(sd), {}
    n = len(config["block_out_channels"])
    layers = _int_layers(config, "VAE")
    for side in ("encoder", "decoder"):
        _move(sd, out, f"{side}.conv_in", f"{side}.conv_in")
        _move(sd, out, f"{side}.conv_out", f"{side}.conv_out")
        _move(sd, out, f"{side}.conv_norm_out", f"{side}.norm_out")
        _move(sd, out, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", VAE_RESNET)
        _move(sd, out, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", VAE_RESNET)
        attn = {}
        _move(sd, attn, f"{side}.mid_block.attentions.0", "a", VAE_ATTN)
        for k, v in attn.items():
            leaf = k[2:]
            conv = v.ndim == 2 and not leaf.startswith("norm.")
            out[f"{side}.mid.attn_1.{leaf}"] = v[:, :, None, None] if conv else v
    for i in range(n):
        for j in range(layers):
            _move(sd, out, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET)
        _move(sd, out, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        for j in range(layers + 1):
            _move(sd, out, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", VAE_RESNET)
        _move(sd, out, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
    _move(sd, out, "quant_conv", "quant_conv")
    _move(sd, out, "post_quant_conv", "post_quant_conv")
    _finish(sd, "VAE")
    return _plain(out, LDM_VAE_PREFIX)


def clip_to_ldm(sd: dict, position_ids: bool = True) -> dict:
    """transformers CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*`.

    transformers >= 5.6 flattened CLIPTextModel (keys `embeddings.*`, `encoder.*`, no `text_model.`
    wrapper); real SD1.5 files, and diffusers' readers, keep the `text_model.` level, so it is added
    back when missing. position_ids: add `text_model.embeddings.position_ids` (int64 [1, n]), as
    every real SD1.5 file has it although transformers no longer saves that buffer."""
    out = _plain({k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()},
                 LDM_CLIP_PREFIX)
    key = LDM_CLIP_PREFIX + "text_model.embeddings.position_ids"
    if position_ids and key not in out:
        n = out[LDM_CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"].shape[0]
        out[key] = torch.arange(n, dtype=torch.int64)[None]
    return out


def to_ldm_checkpoint(unet, vae, text_encoder, *, position_ids: bool = True) -> dict[str, torch.Tensor]:
    """The three diffusers/transformers models as one CompVis/LDM state dict (civitai SD1.5 layout)."""
    sd = unet_to_ldm(unet.state_dict(), dict(unet.config))
    sd.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    sd.update(clip_to_ldm(text_encoder.state_dict(), position_ids=position_ids))
    return sd


def write_ldm_single_file(model_dir, path, *, position_ids: bool = True) -> Path:
    """A diffusers folder (unet/, vae/, text_encoder/) as one .safetensors or .ckpt ({"state_dict": sd})."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    kw = dict(local_files_only=True)
    sd = to_ldm_checkpoint(UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **kw),
                           AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **kw),
                           CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", **kw),
                           position_ids=position_ids)
    return save_weights(sd, path)


# ---------------------------------------------------------------- original AnimateDiff motion module

# what tells the generations apart, for diffusers' infer_diffusers_model_type as for the originals:
# v1 (mm_sd_v15.ckpt) 24-frame tables, no mid block; v2 (mm_sd_v15_v2.ckpt) a mid block; v3 neither
MOTION_GENERATIONS = {
    "v1": dict(use_motion_mid_block=False, motion_max_seq_length=24),
    "v2": dict(use_motion_mid_block=True, motion_max_seq_length=32),
    "v3": dict(use_motion_mid_block=False, motion_max_seq_length=32),
}
_MOTION_KEY = re.compile(r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.(.+)")
_MOTION_LEAF = [("norm1.", "norms.0."), ("norm2.", "norms.1."), ("norm3.", "ff_norm."),
                ("attn1.", "attention_blocks.0."), ("attn2.", "attention_blocks.1.")]


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff's PositionalEncoding table, (1, length, dim)."""
    pos = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def motion_adapter(variant: str = "v2", seed: int = 0, **overrides):
    """A small MotionAdapter of one generation's shape, over the tiny UNet's channels."""
    from diffusers import MotionAdapter

    cfg = dict(block_out_channels=(32, 64, 64, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
               **MOTION_GENERATIONS[variant])
    cfg.update(overrides)
    torch.manual_seed(seed)
    return MotionAdapter(**cfg)


def _original_motion_entries(k: str, v, attention_blocks: int, what: str) -> dict:
    """One diffusers motion-module tensor (a `_MOTION_KEY` name) in the original AnimateDiff layout:
    under `temporal_transformer.`, _MOTION_LEAF's names inside transformer blocks, and the block's
    `pos_embed.pe` copied to each of its `attention_blocks` as `pos_encoder.pe`."""
    head, idx, rest = _MOTION_KEY.fullmatch(k).groups()
    base = f"{head}.motion_modules.{idx}.temporal_transformer."
    tb = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", rest)
    if tb is None:
        if not rest.startswith(("norm.", "proj_in.", "proj_out.")):
            raise ValueError(f"{what}: {k} has no place in the original AnimateDiff layout")
        return {base + rest: v}
    block, leaf = tb.groups()
    base += f"transformer_blocks.{block}."
    if leaf == "pos_embed.pe":
        return {f"{base}attention_blocks.{a}.pos_encoder.pe": v for a in range(attention_blocks)}
    for d, o in _MOTION_LEAF:
        if leaf.startswith(d):
            return {base + o + leaf[len(d):]: v}
    if not leaf.startswith("ff."):
        raise ValueError(f"{what}: {k} has no place in the original AnimateDiff layout")
    return {base + leaf: v}


def _check_generation(sd: dict, variant: str) -> None:
    want = MOTION_GENERATIONS[variant]
    mid = any(k.startswith("mid_block.") for k in sd)
    lengths = {v.shape[1] for k, v in sd.items() if k.endswith("pos_embed.pe")}
    if mid != want["use_motion_mid_block"] or lengths != {want["motion_max_seq_length"]}:
        raise ValueError(f"an AnimateDiff {variant} file needs a MotionAdapter with {want}; this one has "
                         f"use_motion_mid_block={mid}, motion_max_seq_length={sorted(lengths)}")


def to_animatediff_original(adapter_sd: dict, variant: str | None = None) -> dict:
    """diffusers MotionAdapter state dict -> the original AnimateDiff motion-module layout.

    `X.motion_modules.i.<rest>` -> `X.motion_modules.i.temporal_transformer.<rest>`, inside transformer
    blocks norm1/norm2/norm3 -> norms.0/norms.1/ff_norm and attn1/attn2 -> attention_blocks.0/1; each
    attention block gets its own `pos_encoder.pe` (1, max_seq_length, channels), copied from the block's
    `pos_embed.pe`. variant ("v1"/"v2"/"v3"): check the adapter has that generation's shape
    (MOTION_GENERATIONS) and raise ValueError if not, so the file is detected as that generation."""
    if variant is not None:
        _check_generation(adapter_sd, variant)
    out = {}
    for k, v in adapter_sd.items():
        if not _MOTION_KEY.fullmatch(k):
            raise ValueError(f"motion adapter: {k} has no place in the original AnimateDiff layout")
        out.update(_original_motion_entries(k, v, 2, "motion adapter"))
    return _plain(out)


def write_animatediff_original(adapter, path, variant: str | None = None) -> Path:
    """A MotionAdapter (model or diffusers folder) as an original motion module file. .ckpt/.pth are a
    flat dict of tensors, as mm_sd_v15_v2.ckpt; .safetensors as the community conversions."""
    from diffusers import MotionAdapter

    if not isinstance(adapter, MotionAdapter):
        adapter = MotionAdapter.from_pretrained(adapter, local_files_only=True)
    return save_weights(to_animatediff_original(adapter.state_dict(), variant), path, wrap=False)


# ---------------------------------------------------------------- kohya LoRA

_KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
_FLAT_CLIP = ("embeddings.", "encoder.", "final_layer_norm.")  # transformers >= 5.6 CLIPTextModel names
_PEFT_KEY = re.compile(r"(unet|text_encoder|text_encoder_2)\.(.+)\.lora_([AB])\.weight")


def to_kohya_lora(peft_sd: dict, alpha: float | None = None) -> dict:
    """peft/diffusers LoRA (`unet.<module>.lora_A.weight`) -> kohya with diffusers module names
    (`lora_unet_<module_with_underscores>.lora_down.weight`, `.lora_up.weight`, `.alpha`).

    `.alpha` is a scalar tensor: the rank unless given, so the file applies the same update as the
    peft one (scale alpha / rank). With text_encoder_2 present the text encoders are te1/te2 (SDXL).
    Text-encoder modules named after transformers >= 5.6's flattened CLIPTextModel get their
    `text_model.` level back, as in every real file."""
    te1 = "lora_te1_" if any(k.startswith("text_encoder_2.") for k in peft_sd) else "lora_te_"
    out = {}
    for k, v in peft_sd.items():
        m = _PEFT_KEY.fullmatch(k)
        if not m:
            raise ValueError(f"LoRA: {k} is not a peft lora_A/lora_B weight")
        part, module, kind = m.groups()
        if part != "unet" and module.startswith(_FLAT_CLIP):  # as real files: text_model_encoder_layers_...
            module = "text_model." + module
        name = (te1 if part == "text_encoder" else _KOHYA_PREFIX[part]) + module.replace(".", "_")
        out[f"{name}.lora_{'down' if kind == 'A' else 'up'}.weight"] = v
        if kind == "A":
            a = float(alpha if alpha is not None else v.shape[0])
            out[f"{name}.alpha"] = torch.tensor(a, dtype=v.dtype if v.is_floating_point() else torch.float32)
    return _plain(out)


def write_kohya_lora(peft_file, path, alpha: float | None = None) -> Path:
    """A peft LoRA file (or a folder with pytorch_lora_weights.safetensors) as a kohya .safetensors."""
    peft_file = Path(peft_file)
    if peft_file.is_dir():
        peft_file = peft_file / "pytorch_lora_weights.safetensors"
    return save_weights(to_kohya_lora(load_file(str(peft_file)), alpha), path)


# ---------------------------------------------------------------- Hugging Face hub cache


def make_hf_cache(cache_root, repo_id: str, src_dir, *, commit: str | None = None, blobs: bool = False) -> Path:
    """Lay a folder out as the hub cache does: models--org--name/snapshots/<commit>/..., refs/main.

    blobs=False copies the files into the snapshot (as on Windows without symlinks); blobs=True stores
    them under blobs/<sha256> with relative symlinks from the snapshot, as on Linux/macOS. Returns the
    snapshot folder, which `huggingface_hub.snapshot_download(repo_id, cache_dir=cache_root,
    local_files_only=True)` then returns."""
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"commit must be 40 hex digits: {commit!r}")
    repo = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    src_dir = Path(src_dir)
    if not blobs:
        shutil.copytree(src_dir, snap, dirs_exist_ok=True)
    else:
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for f in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            blob = repo / "blobs" / digest
            if not blob.exists():
                shutil.copyfile(f, blob)
            link = snap / f.relative_to(src_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no newline: the hub reads it verbatim
    return snap


# ---------------------------------------------------------------- original ControlNet


def controlnet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers ControlNetModel -> the original layout of control_v11p_sd15_*.pth (control_model.*).

    diffusers' reader hard-codes the hint encoder's last conv at input_hint_block.14, i.e. six
    intermediate convs (conditioning_embedding_out_channels of length 4, as SD1.5's and the tiny one's)."""
    sd, out = dict(sd), {}
    _down_and_mid(sd, out, config, "ControlNet")
    for k in [k for k in sd if k.startswith("controlnet_down_blocks.")]:
        idx, leaf = k.split(".")[1], k.split(".", 2)[2]
        out[f"zero_convs.{idx}.0.{leaf}"] = sd.pop(k)
    _move(sd, out, "controlnet_mid_block", "middle_block_out.0")
    _move(sd, out, "controlnet_cond_embedding.conv_in", "input_hint_block.0")
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("controlnet_cond_embedding.blocks.")})
    for b in blocks:
        _move(sd, out, f"controlnet_cond_embedding.blocks.{b}", f"input_hint_block.{2 * (b + 1)}")
    _move(sd, out, "controlnet_cond_embedding.conv_out", f"input_hint_block.{2 * (len(blocks) + 1)}")
    _finish(sd, "ControlNet")
    return _plain(out, "control_model.")


def write_controlnet_ldm(controlnet_dir, path) -> Path:
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_pretrained(controlnet_dir, local_files_only=True)
    return save_weights(controlnet_to_ldm(cn.state_dict(), dict(cn.config)), path)


# ---------------------------------------------------------------- standalone VAE (vae-ft-mse-840000-ema-pruned)


def write_vae_single_file(vae, path, *, prefix: str = "", wrap: bool = True) -> Path:
    """An AutoencoderKL (model or diffusers folder) as the original VAE file users download: LDM keys
    `encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`, with `prefix` (e.g. first_stage_model.)
    or none; .ckpt/.pt wrapped in {"state_dict": ...} unless wrap=False."""
    from diffusers import AutoencoderKL

    if not isinstance(vae, AutoencoderKL):
        vae = AutoencoderKL.from_pretrained(vae, local_files_only=True)
    sd = {prefix + k[len(LDM_VAE_PREFIX):]: v for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}
    return save_weights(sd, path, wrap=wrap)


# ---------------------------------------------------------------- TAESD (madebyollin/taesd)


def taesd_to_original(sd: dict) -> tuple[dict, dict]:
    """AutoencoderTiny state dict -> (taesd_encoder, taesd_decoder) state dicts: encoder layer i stays
    i; decoder layer i becomes i + 1 (the original decoder's layer 0 is a parameterless clamp)."""
    enc, dec = {}, {}
    for k, v in sd.items():
        side, _, i, rest = k.split(".", 3)  # encoder|decoder . layers . i . rest
        if side == "encoder":
            enc[f"{i}.{rest}"] = v
        else:
            dec[f"{int(i) + 1}.{rest}"] = v
    return _plain(enc), _plain(dec)


def tiny_taesd(seed: int = 0, width: int = 8):
    """A small AutoencoderTiny in TAESD's layout (TAESD's block counts, `width` channels), random weights."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4)


def write_taesd(model, folder, name: str = "taesd", ext: str = ".pth", encoder: bool = True) -> Path:
    """`name`_decoder`ext` (and `name`_encoder`ext`) in `folder`, as madebyollin/taesd ships them;
    returns the decoder's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc, dec = taesd_to_original(model.state_dict())
    if encoder:
        save_weights(enc, folder / f"{name}_encoder{ext}", wrap=False)
    return save_weights(dec, folder / f"{name}_decoder{ext}", wrap=False)


# ---------------------------------------------------------------- textual inversion (A1111)


def write_a1111_embedding(vectors: torch.Tensor, path, name: str | None = None) -> Path:
    """(n, width) vectors as an A1111 embedding: .pt as A1111's trainer saves it, .safetensors as
    `emb_params` (what A1111 writes and most downloads are)."""
    path = Path(path)
    vectors = vectors.detach().clone().contiguous()
    if path.suffix == ".safetensors":
        save_file({"emb_params": vectors}, str(path))
    else:
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                    "name": name or path.stem, "step": 1000, "sd_checkpoint": "0123456789",
                    "sd_checkpoint_name": "sd15"}, path)
    return path


# ---------------------------------------------------------------- AnimateDiff MotionLoRA, v3 domain adapter

_ATTN_ORIGINAL = ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."))


def random_processor_lora(unet, match, rank: int = 4, seed: int = 0, std: float = 0.1) -> dict:
    """Random LoRA tensors in the attention processors' old layout (what AnimateDiff's files use), for
    every to_q/to_k/to_v/to_out.0 Linear of `unet` whose module name `match(name)` accepts: diffusers'
    naming with the `unet.` prefix, `unet.<attention>.processor.to_q_lora.down.weight` (rank, in) and
    `.up.weight` (out, rank)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mod in unet.named_modules():
        m = re.fullmatch(r"(.+)\.(to_q|to_k|to_v|to_out\.0)", name)
        if m is None or not isinstance(mod, torch.nn.Linear) or not match(name):
            continue
        leaf = m.group(2).replace(".0", "")
        out[f"unet.{m.group(1)}.processor.{leaf}_lora.down.weight"] = torch.randn(rank, mod.in_features, generator=g) * std
        out[f"unet.{m.group(1)}.processor.{leaf}_lora.up.weight"] = torch.randn(mod.out_features, rank, generator=g) * std
    return out


def to_motion_lora_original(diffusers_sd: dict) -> dict:
    """diffusers' motion-LoRA layout (animatediff-motion-lora-*: unet.X.motion_modules.i.transformer_blocks.0
    .attn1.processor.to_q_lora.down.weight) -> AnimateDiff's original (v2_lora_*.ckpt: X.motion_modules.i
    .temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight): the
    inverse of diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py."""
    out = {}
    for k, v in diffusers_sd.items():
        m = re.fullmatch(r"unet\.(.+\.motion_modules\.\d+)\.(transformer_blocks\..+)", k)
        if m is None:
            raise ValueError(f"motion LoRA: {k} has no place in the original layout")
        rest = "." + m.group(2)
        for d, o in _ATTN_ORIGINAL:
            rest = rest.replace(d, o)
        out[f"{m.group(1)}.temporal_transformer{rest}"] = v
    return _plain(out)


def write_motion_lora(diffusers_sd: dict, path, layout: str = "original") -> Path:
    """A MotionLoRA file: layout "original" (.ckpt flat, or .safetensors) or "diffusers" (`path` a folder
    holding diffusion_pytorch_model.safetensors, as guoyww/animatediff-motion-lora-* on the hub)."""
    path = Path(path)
    if layout == "diffusers":
        path.mkdir(parents=True, exist_ok=True)
        return save_weights(_plain(diffusers_sd), path / "diffusion_pytorch_model.safetensors")
    return save_weights(to_motion_lora_original(diffusers_sd), path, wrap=False)


def to_v3_adapter(diffusers_sd: dict) -> dict:
    """An image-UNet LoRA in diffusers' processor layout -> v3_sd15_adapter.ckpt's: the same keys without
    the `unet.` prefix (AnimateDiff's load_diffusers_lora walks them from the UNet itself)."""
    if not all(k.startswith("unet.") and ".motion_modules." not in k for k in diffusers_sd):
        raise ValueError("the v3 domain adapter changes the image UNet's layers only")
    return _plain({k[len("unet."):]: v for k, v in diffusers_sd.items()})


def write_v3_adapter(diffusers_sd: dict, path, wrap: bool = True) -> Path:
    """v3_sd15_adapter.ckpt: torch.save of {"state_dict": ...} (or flat), read with weights_only=True."""
    return save_weights(to_v3_adapter(diffusers_sd), path, wrap=wrap)


# ---------------------------------------------------------------- SparseCtrl

def to_sparsectrl_original(sd: dict) -> dict:
    """diffusers SparseControlNetModel state dict -> AnimateDiff v3's original SparseCtrl layout.

    The image-UNet part (conv_in, controlnet_cond_embedding, down_blocks' resnets and attentions, mid_block,
    controlnet_*_blocks) has the same names in both; `down_blocks.i.motion_modules.j.<rest>` ->
    `...motion_modules.j.temporal_transformer.<rest>` with norm1/norm3/attn1 -> norms.0/ff_norm/
    attention_blocks.0 inside its transformer blocks, and the block's `pos_embed.pe` as
    `attention_blocks.0.pos_encoder.pe` (SparseCtrl's motion modules have one temporal self-attention)."""
    out = {}
    for k, v in sd.items():
        out.update(_original_motion_entries(k, v, 1, "SparseCtrl") if _MOTION_KEY.fullmatch(k) else {k: v})
    return _plain(out)


def write_sparsectrl(net, path, wrap: str | None = None) -> Path:
    """A SparseControlNetModel as an original SparseCtrl file: .ckpt a flat dict of tensors (or under
    `wrap`, e.g. "controlnet" as AnimateDiff's trainer saves it), .safetensors flat."""
    sd = to_sparsectrl_original(net.state_dict())
    if wrap and Path(path).suffix != ".safetensors":
        torch.save({wrap: sd}, path)
        return Path(path)
    return save_weights(sd, path, wrap=False)
