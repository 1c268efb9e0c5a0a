"""Loading a ModelSpec into one AnimateDiff pipeline with the LCM scheduler and the LoRAs applied."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import runtime, usage
from ..paths import DATA
from . import embedded
from .identify import FAMILY_BY_CONTEXT
from .libraries import configure
from .locate import ModelRef, ModelSpec
from .weights import load_state_dict, read_json

SD15_CONFIG = DATA / "sd15"
CONTROLNET_SD15_CONFIG = DATA / "controlnet_sd15"


@dataclass
class Models:
    """A loaded model set: one pipeline, weights in memory once."""

    spec: ModelSpec
    pipe: object  # diffusers.AnimateDiffPipeline
    max_frames: int  # the motion module's window
    adapters: dict = field(default_factory=dict)  # plan parameter -> peft adapter name, when not fused
    controlnets: dict = field(default_factory=dict)  # path -> loaded ControlNetModel, loaded on first use
    unet2d_config: dict | None = None  # the base UNet's own config, for a 2D view of the motion UNet
    views: dict = field(default_factory=dict)  # derived pipelines built once (see img2img.unet2d)
    shared_noise: float = 0.0  # the motion module's own default for Settings.shared_noise

    def controlnet(self, ref: ModelRef):
        """A ControlNet on the pipeline's device and dtype, loaded once per path."""
        key = str(ref.path)
        if key not in self.controlnets:
            unet = self.pipe.unet
            cn = _load_controlnet(ref, unet.dtype)
            if tuple(cn.config.block_out_channels) != tuple(unet.config.block_out_channels) or \
                    cn.config.cross_attention_dim != unet.config.cross_attention_dim:
                raise usage(f"{ref.path}: a ControlNet for a UNet with channels {tuple(cn.config.block_out_channels)} "
                            f"and cross-attention {cn.config.cross_attention_dim}; the base model has "
                            f"{tuple(unet.config.block_out_channels)} and {unet.config.cross_attention_dim}")
            self.controlnets[key] = cn.to(self.spec.device).eval()
        return self.controlnets[key]

    @property
    def native_size(self) -> int:
        p = self.pipe
        return p.unet.config.sample_size * p.vae_scale_factor


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _single_file_config(channels: int, path: Path, kind: str) -> Path:
    """The shipped SD1.5 configs or the embedded tiny family's, whichever has these base channels."""
    sd15, small, config = ((SD15_CONFIG, embedded.ensure(), "unet/config.json") if kind == "base"
                           else (CONTROLNET_SD15_CONFIG, embedded.ensure() / "controlnet", "config.json"))
    for candidate in (sd15, small):
        if read_json(candidate / config)["block_out_channels"][0] == channels:
            return candidate
    what = "an SD1.5-layout checkpoint" if kind == "base" else "a ControlNet"
    raise usage(f"{path}: {what} with {channels} base channels; only the SD1.5 architecture (320) is supported")


def _ldm_config_dir(sd: dict, path: Path) -> Path:
    """The component configs that fit a single-file checkpoint: SD1.5's, or the embedded tiny family's."""
    return _single_file_config(sd["model.diffusion_model.input_blocks.0.0.weight"].shape[0], path, "base")


# What a base model's own scheduler config says about how it was trained (and, for zero-terminal-SNR
# models, the "trailing" spacing other samplers built from this config need); the sampler stays LCM.
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                       "rescale_betas_zero_snr", "timestep_spacing")


def _noise_schedule(ref: ModelRef) -> dict:
    """The training noise schedule and prediction type a diffusers folder records (a v-prediction or
    zero-terminal-SNR model needs them); {} for single files, which SD1.5's defaults fit."""
    if ref.sniffed.layout != "diffusers":
        return {}
    path = Path(ref.path) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return {}
    cfg = read_json(path)
    return {k: cfg[k] for k in NOISE_SCHEDULE_KEYS if k in cfg}


def _load_base(ref: ModelRef, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import load_tokenizer

    path = ref.path
    if ref.sniffed.layout == "diffusers":
        variant = _variant(path / "unet")
        kw = dict(torch_dtype=dtype, local_files_only=True, variant=variant)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        return unet, vae, text_encoder, load_tokenizer()

    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    sd = load_state_dict(path)
    config = _ldm_config_dir(sd, path)
    kw = dict(config=str(config), local_files_only=True, torch_dtype=dtype)
    unet = UNet2DConditionModel.from_single_file(sd, subfolder="unet", **kw)
    vae = AutoencoderKL.from_single_file(sd, subfolder="vae", **kw)
    for name, model in (("UNet", unet), ("VAE", vae)):  # diffusers leaves missing weights on 'meta', silently
        hole = next((n for n, p in model.named_parameters() if p.device.type == "meta"), None)
        if hole:
            raise usage(f"{path}: the {name} is incomplete (no weights for {hole})")
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
    te_sd = _match_prefix(convert_ldm_clip_checkpoint(sd), text_encoder.state_dict(), "text_model.")
    missing, unexpected = text_encoder.load_state_dict(te_sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise usage(f"{path}: the text encoder is incomplete (missing {missing[0]} and {len(missing) - 1} more)")
    return unet, vae, text_encoder.to(dtype), load_tokenizer()


def _match_prefix(sd: dict, wanted: dict, prefix: str) -> dict:
    """Add or drop `prefix` so keys match the model: SD1.5 files say `text_model.embeddings...`,
    while newer transformers' CLIPTextModel has flattened that level away."""
    has = any(k.startswith(prefix) for k in sd)
    wants = any(k.startswith(prefix) for k in wanted)
    if has and not wants:
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    if wants and not has:
        return {prefix + k: v for k, v in sd.items()}
    return sd


def _variant(folder: Path) -> str | None:
    """Use fp16 weight files when a diffusers folder has no full-precision ones."""
    if any(folder.glob("diffusion_pytorch_model.safetensors")) or any(folder.glob("diffusion_pytorch_model.bin")):
        return None
    return "fp16" if any(folder.glob("*.fp16.*")) else None


def motion_config_from_original(sd: dict) -> dict:
    """MotionAdapter config from an original AnimateDiff state dict (v1: 24-frame pe, v2: mid block, v3)."""
    downs = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.(\d+)\.motion_modules", k))})
    layers = len({m.group(1) for k in sd if (m := re.match(r"down_blocks\.0\.motion_modules\.(\d+)\.", k))})
    channels = [sd[f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight"].shape[0] for i in downs]
    pe = [v for k, v in sd.items() if k.endswith("pos_encoder.pe")]
    return dict(
        block_out_channels=tuple(channels),
        motion_layers_per_block=layers,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=8,  # AnimateDiff's value for every SD1.5 release
        motion_norm_num_groups=32,
        motion_max_seq_length=pe[0].shape[1] if pe else 32,
        use_motion_mid_block=any(k.startswith("mid_block.") for k in sd),
    )


def _load_controlnet(ref: ModelRef, dtype):
    from diffusers import ControlNetModel

    path = ref.path
    try:
        if path.is_dir():
            return ControlNetModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True,
                                                   variant=_variant(path))
        sd = load_state_dict(path)
        if ref.sniffed.layout == "ldm":
            config = _single_file_config(sd["control_model.input_blocks.0.0.weight"].shape[0], path, "controlnet")
            return ControlNetModel.from_single_file(sd, config=str(config), local_files_only=True, torch_dtype=dtype)
        config = _single_file_config(sd["conv_in.weight"].shape[0], path, "controlnet")
        cn = ControlNetModel.from_config(read_json(config / "config.json"))
        missing, unexpected = cn.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise usage(f"{path}: does not match the ControlNet layout ({(missing or unexpected)[0]})")
        return cn.to(dtype)
    except (OSError, KeyError) as e:
        raise runtime(f"{path}: could not load the ControlNet ({str(e).splitlines()[0]})") from None


def _load_motion(ref: ModelRef, dtype):
    from diffusers import MotionAdapter

    if ref.path.is_dir():
        return MotionAdapter.from_pretrained(ref.path, torch_dtype=dtype, local_files_only=True,
                                             variant=_variant(ref.path))
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    sd = load_state_dict(ref.path)
    if ref.sniffed.layout == "animatediff-original":
        cfg = motion_config_from_original(sd)
        # diffusers' converter drops the positional tables; keep them, some fine-tunes change them
        pe = {k.replace(".temporal_transformer", "").replace(".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe"): v
              for k, v in sd.items() if k.endswith("attention_blocks.0.pos_encoder.pe")}
        sd = {**convert_animatediff_checkpoint_to_diffusers(sd), **pe}
    else:
        raise usage(f"{ref.path}: a single-file motion module in diffusers layout; "
                    "put it in a folder with its config.json")
    adapter = MotionAdapter(**cfg)
    missing, unexpected = adapter.load_state_dict(sd, strict=False)
    if missing or unexpected:
        k = (missing or unexpected)[0]
        raise usage(f"{ref.path}: motion module does not match the AnimateDiff layout ({k})")
    return adapter.to(dtype)


def _check_fits(spec: ModelSpec, unet, adapter):
    ub = tuple(unet.config.block_out_channels)
    ab = tuple(adapter.config.block_out_channels)
    if ub != ab:
        raise usage(f"{spec.motion.path}: the motion module is for a UNet with channels {ab}, "
                    f"but the base model has {ub}")
    ctx = unet.config.cross_attention_dim
    for ref in [spec.lcm_lora, *spec.loras]:
        fam = ref.sniffed.family if ref.sniffed else None
        lctx = next((c for c, f in FAMILY_BY_CONTEXT.items() if f == fam), None)
        if fam and fam != "unknown" and lctx is None:
            m = re.search(r"cross-attention (\d+)", fam)
            lctx = int(m.group(1)) if m else None
        if lctx is not None and lctx != ctx:
            raise usage(f"{ref.path}: a LoRA for a model with cross-attention width {lctx}, "
                        f"but the base model has {ctx}")


def _from(parts: dict | None, key: tuple, loader):
    """A component read from disk once per `parts` cache; callers get a copy, so fusing LoRAs
    into it never touches the cached original (watch mode swaps one model, not all)."""
    if parts is None:
        return loader()
    if key not in parts:
        parts[key] = loader()
    import copy

    return copy.deepcopy(parts[key])


def file_stamp(path: Path) -> tuple:
    """A model file's identity for reuse: one rewritten in place must be read again."""
    st = Path(path).stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def load(spec: ModelSpec, verbose: bool = False, quiet: bool = True, parts: dict | None = None) -> Models:
    """Load every model in `spec` into one AnimateDiff pipeline with the LCM scheduler.

    With `parts` (a dict kept by a Session), components already read are reused: changing the
    motion module or a LoRA does not read the base model again."""
    configure(verbose)
    import torch
    from diffusers import AnimateDiffPipeline, LCMScheduler
    from tqdm import tqdm

    dtype = torch_dtype(spec.dtype)
    bar = tqdm(total=4, desc="load", disable=quiet, leave=False)
    try:
        unet, vae, text_encoder, tokenizer = _from(parts, ("base", file_stamp(spec.base.path), spec.dtype),
                                                   lambda: _load_base(spec.base, dtype))
        bar.update()
        adapter = _from(parts, ("motion", file_stamp(spec.motion.path), spec.dtype),
                        lambda: _load_motion(spec.motion, dtype))
        _check_fits(spec, unet, adapter)
        bar.update()
        scheduler = LCMScheduler.from_config(LCMScheduler.load_config(SD15_CONFIG, subfolder="scheduler"),
                                             **_noise_schedule(spec.base))
        pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   motion_adapter=adapter, scheduler=scheduler,
                                   feature_extractor=None, image_encoder=None)
        pipe.unet.to(dtype)  # the motion UNet is assembled in float32
        adapters = _apply_loras(pipe, spec, parts)
        bar.update()
        pipe.to(spec.device)
        bar.update()
    except torch.OutOfMemoryError:
        raise runtime(f"out of memory loading the models on {spec.device} ({spec.dtype}); "
                      "try --dtype float16 or a smaller model") from None
    except OSError as e:
        raise runtime(f"could not load the models: {str(e).splitlines()[0]}") from None
    finally:
        bar.close()
    shared = 0.0
    if spec.motion.source == "embedded default":
        shared = embedded.sampling_defaults().get("shared_noise", 0.0)
    return Models(spec, pipe, adapter.config.motion_max_seq_length, adapters, unet2d_config=dict(unet.config),
                  shared_noise=shared)


def _apply_loras(pipe, spec: ModelSpec, parts: dict | None = None) -> dict:
    """LCM-LoRA and style LoRAs as peft adapters, weighted with set_adapters, fused unless told not to.

    Returns which adapter carries which schedule parameter (empty once fused)."""
    names, weights, params = [], [], {}
    refs = ([spec.lcm_lora] if spec.lcm_lora.sniffed else []) + spec.loras
    for i, ref in enumerate(refs):
        name = "lcm" if ref.role == "lcm_lora" else f"style{i}"
        sd = dict(_from(parts, ("lora", file_stamp(ref.path)), lambda path=ref.path: load_state_dict(path)))
        try:
            pipe.load_lora_weights(sd, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as e:
            raise usage(f"{ref.path}: LoRA does not fit the base model ({str(e).splitlines()[0][:200]})") from None
        names.append(name)
        weights.append(spec.lcm_lora_scale if ref.role == "lcm_lora" else ref.weight)
        params["lcm_lora_scale" if ref.role == "lcm_lora" else f"lora:{ref.key}"] = name
    if not names:
        return {}
    pipe.set_adapters(names, adapter_weights=weights)
    if spec.fuse:
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
        return {}
    return params
