"""What a model file or folder is (kind, layout, family), from headers and configs only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import usage
from .weights import WEIGHT_EXTS, read_json, safetensors_header, shapes

FAMILY_BY_CONTEXT = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}
SD15_VAE_SCALING = 0.18215  # SD1.x/2.x's VAE (diffusers' LDM_VAE_DEFAULT_SCALING_FACTOR); SDXL's is 0.13025
# An SDXL VAE has exactly SD1.5's tensors (same architecture, other weights), so a lone file can be told
# apart only by what it says of itself: its name (sdxl_vae, sdxl-vae-fp16-fix, taesdxl) or its metadata.
SDXL_NAME = re.compile(r"sd[_-]?xl", re.IGNORECASE)
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass
class Sniffed:
    kind: str  # base | motion | motion_lora | lora | controlnet | sparsectrl | vae | embedding | ip_adapter | clip_vision
    # diffusers | ldm | animatediff-original | animatediff-adapter | kohya | peft | taesd | a1111 | ip-adapter[-plus|-full]
    layout: str
    family: str  # SD1.5 | SD2.x | SDXL | SD1.5-structured (tiny) ...
    file: Path  # the file or folder to load
    detail: dict = field(default_factory=dict)


def _context_dim(shapes: dict, pattern: str, axis: int) -> int | None:
    rx = re.compile(pattern)
    for k, s in shapes.items():
        if rx.search(k) and len(s) > axis:
            return s[axis]
    return None


def _family(ctx: int | None) -> str:
    if ctx is None:
        return "unknown"
    return FAMILY_BY_CONTEXT.get(ctx, f"SD1.5-structured (cross-attention {ctx})")


def _vae_family(latent_channels: int, says_sdxl: bool) -> str:
    if latent_channels != 4:
        return f"SD3/Flux ({latent_channels} latent channels)"
    return "SDXL" if says_sdxl else "SD1.5"


def _unprefixed(keys: list[str]) -> tuple[str, list[str]]:
    """A VAE file's keys without the checkpoint prefix some carry (first_stage_model., vae.)."""
    for prefix in LDM_VAE_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix, [k[len(prefix):] for k in keys]
    return "", keys


ADAPTER_KEY = re.compile(r"^(down_blocks|mid_block|up_blocks)\..*\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


def _motion_lora(shapes: dict, path: Path) -> Sniffed:
    """An AnimateDiff MotionLoRA: the original layout (v2_lora_ZoomIn.ckpt: ...temporal_transformer...
    attention_blocks.M.processor.to_q_lora.down.weight) or diffusers' (animatediff-motion-lora-*:
    unet. ... attn1.processor.to_q_lora.down.weight). Which blocks it reaches tells the module it fits."""
    bare = [k.removeprefix("unet.") for k in shapes]
    layout = "animatediff-original" if any(".temporal_transformer." in k for k in bare) else "diffusers"
    ch = _context_dim({k.removeprefix("unet."): s for k, s in shapes.items()},
                      r"^down_blocks\.0\.motion_modules\.0\..*to_q(_lora\.down|\.lora_A)\.weight$", 1)
    family = "SD1.5" if ch == 320 else f"SD1.5-structured (channels {ch})"
    return Sniffed("motion_lora", layout, family, path,
                   {"mid_block": any(k.startswith("mid_block.") for k in bare), "channels": ch})


TAESD_KEY = re.compile(r"(?:(encoder|decoder)\.layers\.)?(\d+)\.(?:conv\.\d+\.|skip\.|pool\.\d+\.)?(weight|bias)")


def _taesd(shapes: dict, path: Path, says_sdxl: bool) -> Sniffed | None:
    """madebyollin's taesd_decoder/taesd_encoder files (an nn.Sequential's state dict: 1.weight,
    3.conv.0.weight, ...), or an AutoencoderTiny's own (encoder.layers.*, decoder.layers.*)."""
    if not shapes or not all(TAESD_KEY.fullmatch(k) for k in shapes):
        return None
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in shapes):
        first = shapes.get("decoder.layers.0.weight")
        if not first:
            return None
        return Sniffed("vae", "diffusers", _vae_family(first[1], says_sdxl), path,
                       {"decoder": "taesd", "whole": True, "latent_channels": first[1]})
    dec, enc = shapes.get("1.weight"), shapes.get("0.weight")
    if dec and len(dec) == 4 and "0.weight" not in shapes:  # the decoder starts with a clamp, then conv(4, 64)
        return Sniffed("vae", "taesd", _vae_family(dec[1], says_sdxl), path,
                       {"decoder": "taesd", "part": "decoder", "latent_channels": dec[1]})
    if enc and len(enc) == 4 and enc[1] == 3:  # the encoder starts with conv(3, 64)
        last = shapes[max((k for k in shapes if k.endswith(".weight") and k.count(".") == 1),
                          key=lambda k: int(k.split(".")[0]))]
        return Sniffed("vae", "taesd", _vae_family(last[0], says_sdxl), path,
                       {"decoder": "taesd", "part": "encoder", "latent_channels": last[0]})
    return None


def _embedding(shapes: dict, path: Path) -> Sniffed | None:
    """Textual inversion: A1111 .pt (string_to_param.*), A1111 .safetensors (emb_params), diffusers'
    learned_embeds (one token: one tensor); SDXL's have clip_l/clip_g."""
    keys = set(shapes)
    if {"clip_l", "clip_g"} & keys:
        return Sniffed("embedding", "a1111", "SDXL", path)
    if "string_to_param.*" in keys:
        s, layout = shapes["string_to_param.*"], "a1111"
    elif keys == {"emb_params"}:
        s, layout = shapes["emb_params"], "a1111"
    elif len(keys) == 1 and "." not in next(iter(keys)) and len(next(iter(shapes.values()))) in (1, 2) \
            and next(iter(shapes.values()))[-1] >= 64:  # diffusers' learned_embeds: {"<token>": vectors}
        s, layout = next(iter(shapes.values())), "diffusers"
    else:
        return None
    width = s[-1]
    fam = {768: "SD1.5", 1024: "SD2.x"}.get(width, f"SD1.5-structured (width {width})")
    return Sniffed("embedding", layout, fam, path, {"vectors": s[0] if len(s) == 2 else 1, "width": width})


def _ip_adapter(shapes: dict, path: Path) -> Sniffed:
    """IP-Adapter (h94's layout: image_proj.* + ip_adapter.N.to_{k,v}_ip, as .bin or .safetensors).
    Which image features it reads: the encoder's projected image_embeds (ip-adapter: one vector,
    4 tokens) or its penultimate hidden states (plus: a resampler's queries; full-face: an MLP)."""
    ctx = _context_dim(shapes, r"^ip_adapter\.\d+\.to_k_ip\.weight$", 1)
    if "image_proj.latents" in shapes:
        layout, width, feature = "ip-adapter-plus", shapes["image_proj.proj_in.weight"][1], "hidden_states"
    elif "image_proj.proj.3.weight" in shapes:
        layout, width, feature = "ip-adapter-full", shapes["image_proj.proj.0.weight"][1], "hidden_states"
    elif "image_proj.proj.weight" in shapes and "image_proj.norm.weight" in shapes:
        layout, width, feature = "ip-adapter", shapes["image_proj.proj.weight"][1], "image_embeds"
    else:
        layout, width, feature = "ip-adapter-faceid", None, None
    return Sniffed("ip_adapter", layout, _family(ctx), path, {"context_dim": ctx, "image_width": width,
                                                              "feature": feature})


def _clip_vision(shapes: dict, path: Path) -> Sniffed:
    """A CLIP image encoder in transformers' layout (vision_model.*, visual_projection): ComfyUI's
    clip_vision files, the image_encoder folders of IP-Adapter repositories."""
    hidden = shapes.get("vision_model.embeddings.patch_embedding.weight", [None])[0]
    proj = shapes.get("visual_projection.weight", [None])[0]
    return Sniffed("clip_vision", "transformers", f"CLIP ViT (width {hidden})", path,
                   {"hidden_size": hidden, "projection_dim": proj})


def _sparsectrl(shapes: dict, path: Path) -> Sniffed:
    """AnimateDiff v3's SparseCtrl: a ControlNet with motion modules. The original layout
    (v3_sd15_sparsectrl_*.ckpt: ...motion_modules.N.temporal_transformer..., sometimes under
    `controlnet.`) or diffusers' (SparseControlNetModel). RGB's condition is a VAE latent plus the
    mask, through one conv (controlnet_cond_embedding.weight, 4 + 1 channels in); scribble's an image
    plus the mask, through a small conv net (controlnet_cond_embedding.conv_in.weight, 3 + 1 in)."""
    prefix = "controlnet." if all(k.startswith("controlnet.") for k in shapes) else ""
    bare = {k[len(prefix):]: v for k, v in shapes.items()}
    layout = "animatediff-original" if any(".temporal_transformer." in k for k in bare) else "diffusers"
    simple = bare.get("controlnet_cond_embedding.weight")
    first = simple or bare.get("controlnet_cond_embedding.conv_in.weight") or [0, 0]
    ctx = _context_dim(bare, r"attn2\.to_k\.weight$", 1)
    pe = _context_dim(bare, r"pos_(encoder|embed)\.pe$", 1)
    return Sniffed("sparsectrl", layout, _family(ctx), path,
                   {"condition": "rgb" if simple else "scribble", "input_channels": first[1],
                    "channels": bare.get("conv_in.weight", [None])[0], "context_dim": ctx, "max_seq_length": pe})


def classify(shapes: dict[str, list[int]], path: Path, metadata: dict | None = None) -> Sniffed:
    """Tell a model's kind, layout and family from its tensor names and shapes (and, for a VAE,
    what its name and metadata say)."""
    keys = list(shapes)

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders."):
        return Sniffed("base", "ldm", "SDXL", path)
    if has("model.diffusion_model."):
        if has("cond_stage_model.model."):
            return Sniffed("base", "ldm", "SD2.x", path)
        ctx = _context_dim(shapes, r"^model\.diffusion_model\..*attn2\.to_k\.weight$", 1)
        in_ch = shapes.get("model.diffusion_model.input_blocks.0.0.weight", [0, 0])[1]
        return Sniffed("base", "ldm", _family(ctx), path, {"context_dim": ctx, "in_channels": in_ch})
    if any(k.startswith(("controlnet_cond_embedding.", "controlnet.controlnet_cond_embedding.")) for k in keys) \
            and any(".motion_modules." in k for k in keys):
        return _sparsectrl(shapes, path)
    if any(".motion_modules." in k and "lora" in k for k in keys):
        return _motion_lora(shapes, path)
    if any(".motion_modules." in k for k in keys):
        layout = "animatediff-original" if any(".temporal_transformer." in k for k in keys) else "diffusers"
        downs = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.motion_modules", k))}
        ch = _context_dim(shapes, r"^down_blocks\.0\.motion_modules\.0\.(temporal_transformer\.)?proj_in\.weight$", 0)
        family = "SDXL" if len(downs) == 3 else ("SD1.5" if ch == 320 else f"SD1.5-structured (channels {ch})")
        return Sniffed("motion", layout, family, path)
    if has("image_proj.") and has("ip_adapter."):
        return _ip_adapter(shapes, path)
    if has("vision_model.embeddings.") and not has("text_model."):
        return _clip_vision(shapes, path)
    if has("control_model."):
        ctx = _context_dim(shapes, r"^control_model\..*attn2\.to_k\.weight$", 1)
        return Sniffed("controlnet", "ldm", _family(ctx), path)
    if has("controlnet_cond_embedding."):
        ctx = _context_dim(shapes, r"attn2\.to_k\.weight$", 1)
        return Sniffed("controlnet", "diffusers", _family(ctx), path)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        if has("lora_te2_"):
            return Sniffed("lora", "kohya", "SDXL", path)
        ctx = _context_dim(shapes, r"attn2_to_k\.lora_down\.weight$", 1)
        return Sniffed("lora", "kohya", _family(ctx), path)
    if keys and all(ADAPTER_KEY.search(k) for k in keys) and not has("unet."):
        # AnimateDiff v3's domain adapter (v3_sd15_adapter.ckpt): an image-UNet LoRA in the attention
        # processors' old layout, scaled by its weight alone (AnimateDiff's load_diffusers_lora)
        ctx = _context_dim(shapes, r"attn2\.processor\.to_k_lora\.down\.weight$", 1)
        return Sniffed("lora", "animatediff-adapter", _family(ctx), path)
    if any(("lora_A" in k or "lora_B" in k or "lora.down" in k or "lora_down" in k) for k in keys):
        if has("text_encoder_2."):
            return Sniffed("lora", "peft", "SDXL", path)
        ctx = _context_dim(shapes, r"attn2\.(processor\.)?to_k(_lora)?\.(lora_A|lora\.down|down)\.weight$", 1)
        return Sniffed("lora", "peft", _family(ctx), path)
    named = bool(SDXL_NAME.search(Path(path).name))
    says_sdxl = named or any(SDXL_NAME.search(str(v)) for k, v in (metadata or {}).items() if k.startswith("modelspec."))
    because = {"because": "its name says SDXL" if named else "its metadata says SDXL"} if says_sdxl else {}
    prefix, bare = _unprefixed(keys)
    if {"decoder.conv_in.weight", "post_quant_conv.weight"} <= set(bare) or \
            {"encoder.conv_in.weight", "quant_conv.weight"} <= set(bare):
        z = shapes.get(prefix + "decoder.conv_in.weight", [0, 4])[1]
        layout = "diffusers" if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in bare) \
            else "ldm"
        enc, dec = shapes.get(prefix + "encoder.conv_in.weight"), shapes.get(prefix + "decoder.conv_out.weight")
        return Sniffed("vae", layout, _vae_family(z, says_sdxl), path,
                       {"decoder": "kl", "prefix": prefix, "latent_channels": z,
                        "channels": enc[0] if enc else dec[1] if dec else None, **because})
    for found in (_taesd(shapes, path, says_sdxl), _embedding(shapes, path)):
        if found is not None:
            found.detail.update(because if found.kind == "vae" else {})
            return found
    raise usage(f"{path}: not a model lcmvideo recognises (found no SD1.5 UNet, AnimateDiff motion module, "
                "LoRA, ControlNet, SparseCtrl, VAE, textual-inversion, IP-Adapter or CLIP image encoder tensors)")


def sniff(path: Path) -> Sniffed:
    """What a file or diffusers folder holds, from headers and configs only."""
    path = Path(path)
    if path.is_dir():
        if (path / "model_index.json").exists():
            unet_cfg = path / "unet" / "config.json"
            if not unet_cfg.exists():
                raise usage(f"{path}: a diffusers pipeline folder without unet/config.json")
            cfg = read_json(unet_cfg)
            if cfg.get("addition_embed_type") or cfg.get("_class_name") == "UNetMotionModel":
                fam = "SDXL" if cfg.get("addition_embed_type") else "SD1.5 (AnimateDiff UNet)"
                return Sniffed("base", "diffusers", fam, path, {"config": cfg})
            return Sniffed("base", "diffusers", _family(cfg.get("cross_attention_dim")), path, {"config": cfg})
        if (path / "config.json").exists():
            cfg = read_json(path / "config.json")
            cls = cfg.get("_class_name", "")
            if cls == "MotionAdapter":
                fam = "SD1.5" if tuple(cfg.get("block_out_channels", ()))[:1] == (320,) else "SD1.5-structured"
                return Sniffed("motion", "diffusers", fam, path, {"config": cfg})
            if cls == "ControlNetModel":
                return Sniffed("controlnet", "diffusers", _family(cfg.get("cross_attention_dim")), path, {"config": cfg})
            if cls == "SparseControlNetModel":
                simple = cfg.get("use_simplified_condition_embedding", True)
                return Sniffed("sparsectrl", "diffusers", _family(cfg.get("cross_attention_dim")), path,
                               {"config": cfg, "condition": "rgb" if simple else "scribble",
                                "input_channels": cfg.get("conditioning_channels", 4)
                                + bool(cfg.get("concat_conditioning_mask", True)),
                                "channels": tuple(cfg.get("block_out_channels", (320,)))[0],
                                "context_dim": cfg.get("cross_attention_dim"),
                                "max_seq_length": cfg.get("motion_max_seq_length", 32)})
            if cls in ("AutoencoderKL", "AutoencoderTiny"):
                return _vae_folder(path, cfg)
            if cfg.get("model_type") in ("clip_vision_model", "clip"):
                vision = cfg.get("vision_config", cfg) if cfg.get("model_type") == "clip" else cfg
                return Sniffed("clip_vision", "transformers", f"CLIP ViT (width {vision.get('hidden_size')})", path,
                               {"config": cfg, "hidden_size": vision.get("hidden_size"),
                                "projection_dim": vision.get("projection_dim", cfg.get("projection_dim"))})
        loras = sorted(path.glob("*lora*.safetensors")) or sorted(path.glob("*.safetensors"))
        if len(loras) == 1:
            return sniff(loras[0])
        raise usage(f"{path}: not a diffusers model folder (no model_index.json or config.json) "
                    "and not a folder with one LoRA file")
    if not path.exists():
        raise usage(f"{path}: no such file or folder")
    if path.suffix.lower() not in WEIGHT_EXTS:
        raise usage(f"{path}: expected a {'/'.join(WEIGHT_EXTS)} weights file or a diffusers folder")
    if path.suffix == ".safetensors":
        tensors, metadata = safetensors_header(path)
        return classify(tensors, path, metadata)
    return classify(shapes(path), path)


def _repo_name(path: Path) -> str:
    """A folder's own name, or the hub id it was cached under (models--madebyollin--taesdxl/snapshots/<commit>)."""
    parts = path.resolve().parts
    hub = next((p for p in reversed(parts) if p.startswith("models--")), None)
    return hub or path.name


def _vae_folder(path: Path, cfg: dict) -> Sniffed:
    """A diffusers AutoencoderKL or AutoencoderTiny folder. SD1.5's VAE configs say scaling_factor
    0.18215 (or nothing: the default), SDXL's 0.13025; TAESD's and TAESDXL's configs are the same,
    so for those the folder's (or hub id's) name tells."""
    z = cfg.get("latent_channels", 4)
    named = bool(SDXL_NAME.search(_repo_name(path)))
    if cfg["_class_name"] == "AutoencoderTiny":
        return Sniffed("vae", "diffusers", _vae_family(z, named), path,
                       {"decoder": "taesd", "whole": True, "config": cfg, "latent_channels": z,
                        **({"because": "its name says SDXL"} if named else {})})
    scale = cfg.get("scaling_factor", SD15_VAE_SCALING)
    xl_scale = abs(scale - 0.13025) < 1e-6
    fam = _vae_family(z, xl_scale or named)
    if fam == "SD1.5" and abs(scale - SD15_VAE_SCALING) > 1e-6:
        fam = f"unknown (scaling_factor {scale:g}, SD1.5's is {SD15_VAE_SCALING})"
    because = "its config's scaling_factor is SDXL's 0.13025" if xl_scale else "its name says SDXL" if named else None
    return Sniffed("vae", "diffusers", fam, path, {"decoder": "kl", "config": cfg, "latent_channels": z,
                                                  **({"because": because} if because else {})})
