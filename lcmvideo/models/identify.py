"""What a model file or folder is (kind, layout, family), from headers and configs only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import usage
from .weights import WEIGHT_EXTS, read_json, shapes

FAMILY_BY_CONTEXT = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}


@dataclass
class Sniffed:
    kind: str  # base | motion | lora | controlnet
    layout: str  # diffusers | ldm | animatediff-original | kohya | peft
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


def classify(shapes: dict[str, list[int]], path: Path) -> Sniffed:
    """Tell a model's kind, layout and family from its tensor names and shapes."""
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
    if any(".motion_modules." in k for k in keys):
        layout = "animatediff-original" if any(".temporal_transformer." in k for k in keys) else "diffusers"
        downs = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.motion_modules", k))}
        ch = _context_dim(shapes, r"^down_blocks\.0\.motion_modules\.0\.(temporal_transformer\.)?proj_in\.weight$", 0)
        family = "SDXL" if len(downs) == 3 else ("SD1.5" if ch == 320 else f"SD1.5-structured (channels {ch})")
        return Sniffed("motion", layout, family, path)
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
    if any(("lora_A" in k or "lora_B" in k or "lora.down" in k or "lora_down" in k) for k in keys):
        if has("text_encoder_2."):
            return Sniffed("lora", "peft", "SDXL", path)
        ctx = _context_dim(shapes, r"attn2\.(processor\.)?to_k(_lora)?\.(lora_A|lora\.down|down)\.weight$", 1)
        return Sniffed("lora", "peft", _family(ctx), path)
    raise usage(f"{path}: not a model lcmvideo recognises (found no SD1.5 UNet, AnimateDiff motion module, "
                "LoRA or ControlNet tensors)")


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
        loras = sorted(path.glob("*lora*.safetensors")) or sorted(path.glob("*.safetensors"))
        if len(loras) == 1:
            return sniff(loras[0])
        raise usage(f"{path}: not a diffusers model folder (no model_index.json or config.json) "
                    "and not a folder with one LoRA file")
    if not path.exists():
        raise usage(f"{path}: no such file or folder")
    if path.suffix.lower() not in WEIGHT_EXTS:
        raise usage(f"{path}: expected a {'/'.join(WEIGHT_EXTS)} weights file or a diffusers folder")
    return classify(shapes(path), path)
