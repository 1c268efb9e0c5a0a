"""IP-Adapter conditioning of a clip: the image (or keyframe images) encoded once, blended per
frame as keyframes' prompts blend, projected to cross-attention tokens for the denoiser.

With CFG the unconditional half gets diffusers' negative: zero image embeddings (ip-adapter) or
the encoder's features of an all-zero image (plus, full-face), through the same projection.
The scale travels per keyframe (`ip_adapter_scale`) but is set per UNet call, per context window
(the mean of its frames), as LoRA weights are: diffusers' IP-Adapter attention processors take one
number per adapter, not one per batch item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import usage
from ..output.images import IMAGE_EXTS, read_image
from ..schedule import FrameRow, Settings, image_blend


@dataclass
class IpCond:
    adapter: object  # models.ipadapter.IpAdapter
    cond: object  # (T, 1, tokens, D): each frame's image tokens
    uncond: object  # the same for the unconditional half, None without CFG
    scales: list[float]  # per frame (ip_adapter_scale)

    def frames(self, idx) -> tuple:
        """The tokens of frames `idx` (a list or index tensor), as denoise.predict takes them."""
        return self.cond[idx], None if self.uncond is None else self.uncond[idx]


def flag(s: Settings, key: str) -> str:
    names = {"image": "--ip-image", "model": "--ip-adapter", "encoder": "--ip-encoder"}
    return names[key] if s.sources.get(f"ip_{key}" if key != "model" else "ip_adapter") == "flag" \
        else f"ip_adapter.{key}"


def images(s: Settings) -> tuple[list[Path], list[int]]:
    """The image prompt's files and the frames they stand at: one image at frame 0, or a folder's
    images numbered by frame (0000.png, 0016.png), as ControlNet image folders are."""
    from .control import _numbered

    path = Path(s.ip_adapter.image).expanduser()
    if path.is_dir():
        try:
            found = _numbered(path, IMAGE_EXTS, s.frames, "image")
        except Exception as e:  # noqa: BLE001 - the folder's own message, under the key that named it
            raise usage(f"{flag(s, 'image')}: {getattr(e, 'message', e)}") from None
        return [found[f] for f in sorted(found)], sorted(found)
    if not path.is_file():
        raise usage(f"{flag(s, 'image')}: {path}: no such image or folder of images numbered by frame")
    if path.suffix.lower() not in IMAGE_EXTS:
        raise usage(f"{flag(s, 'image')}: {path}: not an image ({', '.join(IMAGE_EXTS)})")
    return [path], [0]


def check(s: Settings):
    """The image prompt's files are there and readable (before any model is loaded)."""
    if s.ip_adapter is None:
        return
    for p in images(s)[0]:
        try:
            read_image(p)
        except Exception as e:  # noqa: BLE001
            raise usage(f"{flag(s, 'image')}: {getattr(e, 'message', e)}") from None


def check_models(s: Settings, spec) -> None:
    """The adapter and its image encoder are found and are SD1.5 IP-Adapter/CLIP files (headers only,
    before any model is loaded): a missing --ip-adapter is refused as --model's is."""
    if s.ip_adapter is not None:
        from ..models import resolve_ip_adapter

        resolve_ip_adapter(s.ip_adapter, spec, s.sources)


def encode(adapter, pictures: list) -> tuple:
    """(features, negative features) of uint8 RGB images: the encoder's image_embeds (N, D) and zeros,
    or its penultimate hidden states (N, S, D) and those of an all-zero image (diffusers' encode_image)."""
    import torch

    enc = adapter.encoder
    dtype, device = next(enc.parameters()).dtype, next(enc.parameters()).device
    pixels = adapter.processor(images=pictures, return_tensors="pt").pixel_values.to(device, dtype)
    if adapter.feature == "image_embeds":
        e = enc(pixels).image_embeds
        return e, torch.zeros_like(e)
    e = enc(pixels, output_hidden_states=True).hidden_states[-2]
    return e, enc(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]


def prepare(models, s: Settings, rows: list[FrameRow], cfg: bool, cache: dict | None = None) -> IpCond | None:
    """The clip's IP-Adapter conditioning (None without ip_adapter): the adapter loaded on first use."""
    if s.ip_adapter is None:
        return None
    import torch

    from ..models import ipadapter, resolve_ip_adapter
    from .text import slerp

    files, numbered = images(s)
    ref, enc = resolve_ip_adapter(s.ip_adapter, models.spec, s.sources)
    ipadapter.check_fits(ref, enc, models.unet2d_config, flag(s, "model"), flag(s, "encoder"))
    adapter = ipadapter.get(models, ref, enc)
    key = (str(adapter.path), str(adapter.encoder_path), tuple((str(p), p.stat().st_mtime_ns) for p in files))
    known = {} if cache is None else cache.setdefault("ip_adapter", {})
    if key not in known:
        known[key] = encode(adapter, [read_image(p) for p in files])
    feats, negative = known[key]
    per_frame = []
    for blend in image_blend(numbered, s.frames, s.loop, s.hold):
        if len(blend) == 1:
            per_frame.append(feats[blend[0][0]])
            continue
        (i, wa), (j, wb) = blend
        per_frame.append(slerp(feats[i], feats[j], wb) if s.interpolation == "slerp" else feats[i] * wa + feats[j] * wb)
    cond = adapter.proj([torch.stack(per_frame)[:, None]])[0]
    uncond = None
    if cfg:
        neg = adapter.proj([negative[:1, None]])[0]
        uncond = neg.expand(len(rows), *neg.shape[1:])
    dtype = models.pipe.unet.dtype
    return IpCond(adapter, cond.to(dtype), None if uncond is None else uncond.to(dtype),
                  [r.params["ip_adapter_scale"] for r in rows])
