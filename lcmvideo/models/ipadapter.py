"""IP-Adapter: an image as a prompt, through extra key/value projections in the UNet's cross-attention.

h94's SD1.5 files (ip-adapter_sd15, ip-adapter-plus_sd15, ip-adapter-full-face_sd15), as a `.bin`
({"image_proj": ..., "ip_adapter": ...}, read with torch.load(weights_only=True)) or a `.safetensors`
with image_proj./ip_adapter. keys, and the CLIP image encoder they were trained with
(CLIPVisionModelWithProjection: a transformers folder, or one file in its layout as ComfyUI keeps
them in models/clip_vision).

The adapter's attention processors and image projection are made by diffusers' own
`_load_ip_adapter_weights` (the code behind `load_ip_adapter`), random initialisation skipped, then
taken off the UNet again: they are installed only while a clip that uses them renders (`installed`),
so renders without one, and the 2D view img2img shares the UNet's modules with, run the plain
processors. The projection runs outside the UNet: UNetMotionModel would repeat one image embedding
per window over its frames, and here each frame has its own (keyframe images blend).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import usage
from .loader import _on, _weights_file, torch_dtype
from .locate import ModelRef
from .weights import load_state_dict, read_json

# A lone encoder file says its geometry in its tensors' shapes but not its heads or activation; these
# are OpenCLIP's and OpenAI's by width (ComfyUI picks its configs by the number of layers the same way).
ENCODER_HEADS = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}
FEATURE_WIDTH = {"image_embeds": "projection_dim", "hidden_states": "hidden_size"}


@dataclass
class IpAdapter:
    path: Path
    procs: dict  # attention processor name -> processor; the IP ones hold to_k_ip/to_v_ip
    proj: object  # diffusers MultiIPAdapterImageProjection: image features -> cross-attention tokens
    encoder: object  # transformers CLIPVisionModelWithProjection
    processor: object  # transformers CLIPImageProcessor: resize, centre crop, normalise
    feature: str  # image_embeds (ip-adapter) | hidden_states (plus, full-face: the penultimate layer)
    encoder_path: Path | None = None

    def ip_processors(self) -> list:
        return [p for p in self.procs.values() if hasattr(p, "to_k_ip")]


def encoder_config(shapes: dict) -> dict:
    """CLIPVisionConfig arguments from a transformers-layout state dict's shapes."""
    patch = shapes["vision_model.embeddings.patch_embedding.weight"]
    hidden, size = patch[0], patch[2]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    layers = len({k.split(".")[3] for k in shapes if k.startswith("vision_model.encoder.layers.")})
    if hidden not in ENCODER_HEADS:
        raise KeyError(hidden)
    heads, act = ENCODER_HEADS[hidden]
    return dict(hidden_size=hidden, patch_size=size, image_size=size * round((positions - 1) ** 0.5),
                num_hidden_layers=layers, num_attention_heads=heads, hidden_act=act,
                intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
                projection_dim=shapes["visual_projection.weight"][0], layer_norm_eps=1e-5)


def _encoder(ref: ModelRef, dtype, device):
    """(CLIPVisionModelWithProjection built on the meta device around its weights, CLIPImageProcessor)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = ref.path
    if path.is_dir():
        config = CLIPVisionConfig.from_pretrained(str(path), local_files_only=True)
        sd = load_state_dict(_weights_file(path, "model") if any(path.glob("model*")) else
                             _weights_file(path, "pytorch_model"))
    else:
        sd = load_state_dict(path)
        try:
            config = CLIPVisionConfig(**encoder_config({k: list(v.shape) for k, v in sd.items()}))
        except KeyError as e:
            raise usage(f"{path}: a CLIP image encoder of width {e.args[0]} without its config; put it in a "
                        "folder with its config.json (CLIPVisionModelWithProjection)") from None
    sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))
          and not k.endswith("position_ids")}
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    missing, _ = model.load_state_dict(_on(sd, dtype, device), strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise usage(f"{path}: not a complete CLIP image encoder (missing {missing[0]} and {len(missing) - 1} more)")
    for name, buf in list(model.named_buffers()):
        if buf.device.type == "meta":  # non-persistent: the position ids, made as the model makes them
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(leaf, torch.arange(buf.shape[-1], device=device)
                                                       .expand(buf.shape), persistent=False)
    size = config.image_size
    pre = path / "preprocessor_config.json" if path.is_dir() else None
    processor = CLIPImageProcessor(**{k: v for k, v in read_json(pre).items() if not k.startswith("_")}) \
        if pre is not None and pre.is_file() else \
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model.eval(), processor


def check_fits(ref: ModelRef, encoder: ModelRef, unet_config: dict, flag: str, enc_flag: str):
    """Refuse, from headers, an IP-Adapter for another UNet or one whose encoder is of another width."""
    d = ref.sniffed.detail
    if d.get("context_dim") != unet_config["cross_attention_dim"]:
        raise usage(f"{flag}: {ref.path} is an IP-Adapter for cross-attention width {d.get('context_dim')}, "
                    f"but the base model has {unet_config['cross_attention_dim']}")
    key = FEATURE_WIDTH[d["feature"]]
    have = encoder.sniffed.detail.get(key)
    if have is not None and have != d["image_width"]:
        raise usage(f"{enc_flag}: {encoder.path}: the CLIP image encoder's {key} is {have}, but {ref.path.name} "
                    f"reads image features of width {d['image_width']} (ip-adapter_sd15 and plus_sd15 take ViT-H/14)")


def load(unet, ref: ModelRef, encoder: ModelRef, dtype_name: str, device: str) -> IpAdapter:
    """The adapter's processors and projection (diffusers' loader, on `unet`, which is left as it was)
    and its image encoder; each file read once, each tensor converted once to the run's dtype/device."""
    from diffusers.models.modeling_utils import no_init_weights

    dtype = torch_dtype(dtype_name)
    flat = _on(load_state_dict(ref.path), dtype, device)
    sd = {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")}
          for part in ("image_proj", "ip_adapter")}
    del flat
    before = unet.attn_processors
    try:
        with no_init_weights():  # every weight is loaded over: nothing to initialise at random
            unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError) as e:
        _detach(unet, before)
        raise usage(f"{ref.path}: the IP-Adapter does not fit the base model ({str(e).splitlines()[0][:200]})") from None
    finally:
        del sd
    # the plus resampler's own attention layers are the projection's, not the UNet's
    procs = {k: v for k, v in unet.attn_processors.items() if not k.startswith("encoder_hid_proj.")}
    proj = unet.encoder_hid_proj
    _detach(unet, before)
    model, processor = _encoder(encoder, dtype, device)
    return IpAdapter(Path(ref.path), procs, proj.to(device, dtype), model, processor,
                     ref.sniffed.detail["feature"], encoder.path)


def _detach(unet, procs: dict):
    unet.encoder_hid_proj = None  # first: a plus adapter's resampler counts among the attention layers
    unet.config.encoder_hid_dim_type = None
    unet.set_attn_processor(procs)


@contextlib.contextmanager
def installed(unet, adapter: IpAdapter | None):
    """The adapter's attention processors in the UNet for the duration (nothing with None)."""
    if adapter is None:
        yield
        return
    before = unet.attn_processors
    unet.set_attn_processor(dict(adapter.procs))
    try:
        yield
    finally:
        unet.set_attn_processor(before)


def set_scale(adapter: IpAdapter, scale: float):
    for p in adapter.ip_processors():
        p.scale = [float(scale)]


def get(models, ref: ModelRef, encoder: ModelRef) -> IpAdapter:
    """The adapter of a loaded model set, loaded once per (adapter, encoder) file."""
    from .loader import file_stamp

    key = (file_stamp(ref.path), file_stamp(encoder.path) if encoder.path.is_file() else str(encoder.path))
    if key not in models.ip_adapters:
        models.ip_adapters.clear()  # one at a time: a new one lets the last go
        unet = models.pipe.unet
        models.ip_adapters[key] = load(unet, ref, encoder, models.spec.dtype, models.spec.device)
    return models.ip_adapters[key]
