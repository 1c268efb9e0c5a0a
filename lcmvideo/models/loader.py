"""Loading a ModelSpec into one AnimateDiff pipeline with the LCM scheduler and the LoRAs applied.

Every module is built on the meta device and given its weights with `load_state_dict(assign=True)`:
nothing is randomly initialised only to be overwritten, each file is read once, each tensor is
converted once, straight to the run's dtype and device, and the motion UNet is assembled from the
base UNet's and the motion module's tensors without copying them. A Session that changes only the
LoRAs, the motion module, the VAE or the embeddings keeps the rest: LoRAs are unfused from the weights
they were fused into, a new motion module is assembled around the same base tensors, a VAE is read
alone (the base's own VAE from its part of the base file), and textual-inversion vectors sit in a
small table beside the text encoder's token embedding, which is not copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import runtime, usage
from ..paths import DATA
from . import embedded
from .chunking import bound_feed_forward
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
    keys: dict = field(default_factory=dict)  # base/motion/vae -> the files and run settings they came from
    fused: bool = False  # LoRAs merged into the weights (with their adapters kept, to unfuse for reuse)
    embeddings: dict = field(default_factory=dict)  # lower-case name -> Embedding (token ids in the text encoder)
    ip_adapters: dict = field(default_factory=dict)  # (adapter, encoder) stamps -> ipadapter.IpAdapter, on first use

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
            bound_feed_forward(cn)
            self.controlnets[key] = cn.to(self.spec.device).eval()
        return self.controlnets[key]

    def sparsectrl(self, ref: ModelRef):
        """A SparseCtrl RGB model on the pipeline's device and dtype, loaded once per file; its
        config is the base UNet's (as diffusers' SparseControlNetModel.from_unet derives it)."""
        key = ("sparsectrl", file_stamp(ref.path))
        if key not in self.controlnets:
            net = load_sparsectrl(ref, self.unet2d_config or dict(self.pipe.unet.config), self.pipe.unet.dtype,
                                  self.spec.device)
            bound_feed_forward(net)
            self.controlnets[key] = net
        return self.controlnets[key]

    @property
    def native_size(self) -> int:
        p = self.pipe
        return p.unet.config.sample_size * p.vae_scale_factor


@dataclass
class Embedding:
    """A textual-inversion embedding as the text encoder holds it: one token id per vector."""

    name: str  # as written in prompts (the file's stem)
    ids: list[int]
    path: Path


SCHEDULERS = {"lcm": "LCMScheduler", "tcd": "TCDScheduler"}


def make_scheduler(sampler: str, config):
    """The sampler's diffusers scheduler from a scheduler config (the two share LCM's settings)."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[sampler]).from_config(config)


def retune(models: Models, spec: ModelSpec) -> Models:
    """Take the settings a loaded set changes without loading (clip skip, sampler, gamma, lcm_map)."""
    for k in ("clip_skip", "gamma", "lcm_map", "sparsectrl"):
        setattr(models.spec, k, getattr(spec, k))
    if spec.sampler != models.spec.sampler:
        models.spec.sampler = spec.sampler
        models.pipe.scheduler = make_scheduler(spec.sampler, models.pipe.scheduler.config)
    return models


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _single_file_config(channels: int, path: Path, kind: str) -> Path:
    """The shipped SD1.5 configs or the embedded tiny family's, whichever has these base channels."""
    sd15, small, config = {"base": (SD15_CONFIG, embedded.ensure(), "unet/config.json"),
                           "vae": (SD15_CONFIG, embedded.ensure(), "vae/config.json"),
                           "controlnet": (CONTROLNET_SD15_CONFIG, embedded.ensure() / "controlnet", "config.json")}[kind]
    for candidate in (sd15, small):
        if read_json(candidate / config)["block_out_channels"][0] == channels:
            return candidate
    what = {"base": "an SD1.5-layout checkpoint", "vae": "a VAE", "controlnet": "a ControlNet"}[kind]
    full = {"base": 320, "vae": 128, "controlnet": 320}[kind]
    raise usage(f"{path}: {what} with {channels} base channels; only the SD1.5 architecture ({full}) is supported")


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


def _on(sd: dict, dtype, device) -> dict:
    """The tensors of `sd` in the run's dtype (floating ones) and on its device, one at a time, each
    source tensor let go as soon as it is converted: the peak is one copy plus one tensor.

    Always a copy, also where the dtype is already right: a tensor read with mmap stays a view of the
    file, whose pages the kernel may drop under memory pressure and read from disk again in the
    middle of a render."""
    out = {}
    for k in list(sd):
        v = sd.pop(k)
        out[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else None, copy=True)
    return out


def _in_memory(module):
    """A module from a library loader with its tensors copied into memory (see `_on`)."""
    import itertools

    import torch

    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            t.data = t.data.clone()
    return module


def _take(sd: dict, prefix: str) -> dict:
    return {k: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}


def _weights_file(folder: Path, stem: str = "diffusion_pytorch_model") -> Path:
    """A diffusers folder's weights: full precision if there, else the fp16 variant; safetensors first."""
    for name in (f"{stem}.safetensors", f"{stem}.bin", f"{stem}.fp16.safetensors", f"{stem}.fp16.bin"):
        if (folder / name).is_file():
            return folder / name
    raise usage(f"{folder}: no {stem}.safetensors (or .bin, or an fp16 variant) in the folder")


def _text_encoder(config_dir: Path, sd: dict, path: Path, dtype, device):
    """CLIPTextModel built on the meta device around a converted state dict."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    sd = _match_prefix(sd, text_encoder.state_dict(), "text_model.")
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # a buffer the model makes itself
    missing, _ = text_encoder.load_state_dict(_on(sd, dtype, device), strict=False, assign=True)
    if missing:
        raise usage(f"{path}: the text encoder is incomplete (missing {missing[0]} and {len(missing) - 1} more)")
    for name, buf in list(text_encoder.named_buffers()):
        if buf.device.type == "meta":  # non-persistent buffers: position ids, made as the model does
            owner, _, leaf = name.rpartition(".")
            ids = torch.arange(buf.shape[-1], device=device).expand(buf.shape)
            text_encoder.get_submodule(owner).register_buffer(leaf, ids, persistent=False)
    return text_encoder.eval()


def _load_base(ref: ModelRef, dtype, device, with_vae: bool = True):
    """(2D UNet config, its state dict on the device, VAE or None, text encoder, tokenizer) of a base
    model; without `with_vae` (another VAE was named) the base's own VAE is not built."""
    from transformers import CLIPTextModel

    from .tokenizer import load_tokenizer

    path = ref.path
    if ref.sniffed.layout == "diffusers":
        config = read_json(path / "unet" / "config.json")
        unet_sd = _on(load_state_dict(_weights_file(path / "unet")), dtype, device)
        vae = _base_vae(ref, dtype, device) if with_vae else None
        kw = dict(torch_dtype=dtype, local_files_only=True, variant=_variant(path / "text_encoder"))
        text_encoder = _in_memory(CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw).to(device))
        return config, unet_sd, vae, text_encoder, load_tokenizer()

    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint

    sd = load_state_dict(path)
    config_dir = _ldm_config_dir(sd, path)
    config = read_json(config_dir / "unet" / "config.json")
    unet_sd = _on(convert_ldm_unet_checkpoint(_take(sd, "model.diffusion_model."), config), dtype, device)
    vae_sd = _take(sd, "first_stage_model.")
    vae = _vae_from_ldm(vae_sd, config_dir, path, dtype, device) if with_vae else None
    del vae_sd
    text_encoder = _text_encoder(config_dir, convert_ldm_clip_checkpoint(sd), path, dtype, device)
    return config, unet_sd, vae, text_encoder, load_tokenizer()


def _meta_model(cls, config: dict, sd: dict, path: Path, what: str, dtype, device, optional: tuple = ()):
    """A diffusers model built on the meta device and given `sd` (converted once to dtype/device)."""
    import torch

    with torch.device("meta"):
        model = cls.from_config(config)
    missing, unexpected = model.load_state_dict(_on(sd, dtype, device), strict=False, assign=True)
    missing = [k for k in missing if not k.startswith(optional)]
    if missing or unexpected:
        raise usage(f"{path}: {what} does not match its layout ({'missing' if missing else 'unexpected'} "
                    f"{(missing or unexpected)[0]} and {len(missing or unexpected) - 1} more)")
    return model.eval()


def _config(path: Path) -> dict:
    return {k: v for k, v in read_json(path).items() if not k.startswith("_")}


def _vae_from_ldm(sd: dict, config_dir: Path, path: Path, dtype, device):
    """AutoencoderKL from original (LDM) VAE tensors, with or without a first_stage_model./vae. prefix
    (diffusers' convert_ldm_vae_checkpoint: the mid-block attention's 1x1 convs become linear)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = _config(config_dir / "vae" / "config.json")
    return _meta_model(AutoencoderKL, cfg, convert_ldm_vae_checkpoint(sd, cfg), path, "the VAE", dtype, device)


def _base_vae(ref: ModelRef, dtype, device):
    """The base model's own VAE, read alone: its diffusers folder's vae/, or the first_stage_model.
    tensors of its single file (only those are read from a .safetensors)."""
    from diffusers import AutoencoderKL

    path = ref.path
    if ref.sniffed.layout == "diffusers":
        return _meta_model(AutoencoderKL, _config(path / "vae" / "config.json"),
                           load_state_dict(_weights_file(path / "vae")), path / "vae", "the VAE", dtype, device)
    sd = _read_prefixed(path, "first_stage_model.")
    conv_in = sd.get("first_stage_model.encoder.conv_in.weight")
    return _vae_from_ldm(sd, _single_file_config(0 if conv_in is None else conv_in.shape[0], path, "vae"), path,
                         dtype, device)


def _read_prefixed(path: Path, prefix: str) -> dict:
    """The tensors of a weights file under `prefix`; from a .safetensors, only those are read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    return _take(load_state_dict(path), prefix)


TAESD_CONFIG = dict(in_channels=3, out_channels=3, act_fn="relu", upsample_fn="nearest",
                    num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1), latent_magnitude=3,
                    latent_shift=0.5, upsampling_scaling_factor=2, scaling_factor=1.0)


def taesd_to_diffusers(encoder: dict | None, decoder: dict) -> dict:
    """madebyollin's taesd_encoder/taesd_decoder state dicts -> AutoencoderTiny's (as diffusers'
    scripts/convert_tiny_autoencoder_to_diffusers.py): encoder layer i stays i, decoder layer i is
    i - 1 (the original's layer 0 is the clamp, which AutoencoderTiny applies in forward)."""
    out = {f"encoder.layers.{k}": v for k, v in (encoder or {}).items()}
    for k, v in decoder.items():
        i, rest = k.split(".", 1)
        out[f"decoder.layers.{int(i) - 1}.{rest}"] = v
    return out


def _load_vae(ref: ModelRef, dtype, device):
    """The VAE named with --vae: AutoencoderKL (original single file, diffusers folder or file) or
    AutoencoderTiny (TAESD: a diffusers folder or file, or madebyollin's decoder/encoder pair). A TAESD
    without its encoder decodes only; encoding (restyle, live) then says what is missing."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    s, path = ref.sniffed, ref.path
    if s.detail.get("decoder") == "kl":
        if path.is_dir():
            return _meta_model(AutoencoderKL, _config(path / "config.json"), load_state_dict(_weights_file(path)),
                               path, "the VAE", dtype, device)
        sd = load_state_dict(path)
        config_dir = _single_file_config(s.detail.get("channels") or 0, path, "vae")
        if s.layout == "diffusers":  # a lone diffusers-layout file: the config that fits it
            n = len(s.detail.get("prefix", ""))
            return _meta_model(AutoencoderKL, _config(config_dir / "vae" / "config.json"),
                               {k[n:]: v for k, v in sd.items()}, path, "the VAE", dtype, device)
        return _vae_from_ldm(sd, config_dir, path, dtype, device)
    if path.is_dir():
        return _meta_model(AutoencoderTiny, _config(path / "config.json"), load_state_dict(_weights_file(path)),
                           path, "TAESD", dtype, device)
    if s.layout == "taesd":
        encoder_file = s.detail.get("encoder_file")
        sd = taesd_to_diffusers(load_state_dict(encoder_file) if encoder_file else None, load_state_dict(path))
    else:
        sd = load_state_dict(path)
    first = sd["decoder.layers.0.weight"]
    cfg = dict(TAESD_CONFIG, latent_channels=first.shape[1], encoder_block_out_channels=(first.shape[0],) * 4,
               decoder_block_out_channels=(first.shape[0],) * 4)
    has_encoder = any(k.startswith("encoder.") for k in sd)
    vae = _meta_model(AutoencoderTiny, cfg, sd, path, "TAESD", dtype, device,
                      optional=() if has_encoder else ("encoder.",))
    if not has_encoder:
        vae.encoder = None  # decoding only; pipeline.decode.encode says what is missing
    return vae


_TOKEN_EMBEDDING = None


def _token_embedding_class():
    """nn.Embedding whose ids past the vocabulary read a small table of textual-inversion vectors:
    the vocabulary's weight is the text encoder's own (shared, not copied) and the table is a
    non-persistent buffer, so the text encoder's state dict is unchanged."""
    global _TOKEN_EMBEDDING
    if _TOKEN_EMBEDDING is None:
        import torch

        class TokenEmbedding(torch.nn.Embedding):
            def __init__(self, base, extra):
                torch.nn.Module.__init__(self)
                self.base_rows, self.embedding_dim = base.num_embeddings, base.embedding_dim
                self.num_embeddings = base.num_embeddings + extra.shape[0]
                self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, None, 2.0
                self.scale_grad_by_freq, self.sparse = False, False
                self.weight = base.weight
                self.register_buffer("extra", extra, persistent=False)

            def forward(self, ids):
                n = self.base_rows
                if not bool((ids >= n).any()):
                    return torch.nn.functional.embedding(ids, self.weight)
                plain = torch.nn.functional.embedding(ids.clamp(max=n - 1), self.weight)
                added = torch.nn.functional.embedding((ids - n).clamp(min=0), self.extra.to(plain.dtype))
                return torch.where((ids >= n)[..., None], added, plain)

            def plain(self):
                base = torch.nn.Embedding(self.base_rows, self.embedding_dim, padding_idx=self.padding_idx,
                                          device="meta")
                base.weight = self.weight
                return base

        _TOKEN_EMBEDDING = TokenEmbedding
    return _TOKEN_EMBEDDING


def read_embedding(path: Path):
    """(vectors, width) of a textual-inversion file: A1111 .pt (string_to_param["*"], read with
    weights_only=True), A1111 .safetensors (emb_params), or diffusers' learned_embeds (one token)."""
    sd = load_state_dict(Path(path))
    for key in ("string_to_param.*", "emb_params"):
        if key in sd:
            v = sd[key]
            break
    else:
        if len(sd) != 1:
            raise usage(f"{path}: not a textual-inversion embedding (expected string_to_param or emb_params)")
        v = next(iter(sd.values()))
    v = v.detach()
    return v[None] if v.ndim == 1 else v.reshape(-1, v.shape[-1])


def _apply_embeddings(text_encoder, refs: list[ModelRef], dtype, device) -> dict:
    """Put the embeddings' vectors after the vocabulary (replacing those of a previous set);
    returns lower-case name -> Embedding."""
    import torch

    cls = _token_embedding_class()
    current = text_encoder.get_input_embeddings()
    base = current.plain() if isinstance(current, cls) else current
    rows, table = [], {}
    for ref in refs:
        v = read_embedding(ref.path)
        if v.shape[-1] != base.embedding_dim:
            raise usage(f"{ref.path}: an embedding {v.shape[-1]} wide; this base model's text encoder is "
                        f"{base.embedding_dim} wide (an embedding for another model family)")
        first = base.num_embeddings + sum(len(r) for r in rows)
        table[ref.key.lower()] = Embedding(ref.key, list(range(first, first + len(v))), ref.path)
        rows.append(v)
    if rows:
        with torch.no_grad():
            extra = torch.cat([r.to(device=device, dtype=dtype) for r in rows])
        text_encoder.set_input_embeddings(cls(base, extra))
    elif base is not current:
        text_encoder.set_input_embeddings(base)
    return table


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


def sparsectrl_config(unet2d_config: dict, max_seq_length: int | None = None) -> dict:
    """SparseControlNetModel's config for SparseCtrl RGB over a base UNet: its blocks, widths and
    attention as diffusers' SparseControlNetModel.from_unet takes them from the UNet; the condition
    a latent of the UNet's channels plus the mask through one conv (v3_sd15_sparsectrl_rgb's, and
    diffusers' conversion script's --conditioning_channels 4 --use_simplified_condition_embedding);
    AnimateDiff's 8 motion heads and 32-frame positional table unless the file says otherwise."""
    c = unet2d_config
    types = [("CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion") for t in c["down_block_types"]]
    return dict(in_channels=c["in_channels"], conditioning_channels=c["in_channels"],
                flip_sin_to_cos=c.get("flip_sin_to_cos", True), freq_shift=c.get("freq_shift", 0),
                down_block_types=tuple(types), only_cross_attention=c.get("only_cross_attention", False),
                block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
                downsample_padding=c.get("downsample_padding", 1),
                mid_block_scale_factor=c.get("mid_block_scale_factor", 1), act_fn=c.get("act_fn", "silu"),
                norm_num_groups=c.get("norm_num_groups", 32), norm_eps=c.get("norm_eps", 1e-5),
                cross_attention_dim=c["cross_attention_dim"],
                transformer_layers_per_block=c.get("transformer_layers_per_block", 1),
                attention_head_dim=c.get("attention_head_dim", 8), num_attention_heads=c.get("num_attention_heads"),
                use_linear_projection=c.get("use_linear_projection", False),
                upcast_attention=c.get("upcast_attention", False),
                resnet_time_scale_shift=c.get("resnet_time_scale_shift", "default"),
                motion_max_seq_length=max_seq_length or 32, motion_num_attention_heads=8,
                concat_conditioning_mask=True, use_simplified_condition_embedding=True)


def sparsectrl_to_diffusers(sd: dict) -> dict:
    """An original-layout SparseCtrl state dict (flat, or under `controlnet.`) -> SparseControlNetModel's:
    diffusers' own convert_animatediff_checkpoint_to_diffusers (the motion modules' keys; the rest are
    already diffusers' names), with the positional tables kept as diffusers' conversion script keeps
    them (attention_blocks.0.pos_encoder -> pos_embed). A diffusers-layout file passes through."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    if sd and all(k.startswith("controlnet.") for k in sd):
        sd = {k[len("controlnet."):]: v for k, v in sd.items()}
    sd.pop("animatediff_config", None)
    if not any(".temporal_transformer." in k for k in sd):
        return sd
    pe = {k.replace(".temporal_transformer", "").replace(".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe"): v
          for k, v in sd.items() if k.endswith("attention_blocks.0.pos_encoder.pe")}
    return {**convert_animatediff_checkpoint_to_diffusers(sd), **pe}


def load_sparsectrl(ref: ModelRef, unet2d_config: dict, dtype, device, flag: str | None = None):
    """SparseControlNetModel of a SparseCtrl RGB file or diffusers folder, built on the meta device and
    given its tensors once; one that does not fit the base UNet is a usage error naming `flag`."""
    import torch
    from diffusers import SparseControlNetModel
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    from .locate import sparsectrl_flag

    flag = flag or sparsectrl_flag(ref.source)
    path, d = ref.path, ref.sniffed.detail
    base = (tuple(unet2d_config["block_out_channels"]), unet2d_config["cross_attention_dim"])
    if (d.get("channels"), d.get("context_dim")) != (base[0][0], base[1]) or \
            d.get("input_channels") != unet2d_config["in_channels"] + 1:
        raise usage(f"{flag}: {path} is a SparseCtrl for a UNet with {d.get('channels')} base channels and "
                    f"cross-attention {d.get('context_dim')} ({d.get('input_channels')} condition channels); the "
                    f"base model has {base[0][0]} and {base[1]} ({unet2d_config['in_channels'] + 1})")
    sd = sparsectrl_to_diffusers(load_state_dict(_weights_file(path) if path.is_dir() else path))
    lengths = {v.shape[1] for k, v in sd.items() if k.endswith("pos_embed.pe")}
    with torch.device("meta"):
        net = SparseControlNetModel.from_config(sparsectrl_config(unet2d_config, max(lengths) if lengths else None))
    if not lengths:  # no positional tables in the file: AnimateDiff's sinusoids, made as diffusers makes them
        for name, m in net.named_modules():
            if isinstance(m, SinusoidalPositionalEmbedding):
                sd[f"{name}.pe"] = SinusoidalPositionalEmbedding(m.pe.shape[-1], m.pe.shape[1]).pe
    try:
        missing, unexpected = net.load_state_dict(_on(sd, dtype, device), strict=False, assign=True)
    except RuntimeError as e:  # a tensor of another shape: a SparseCtrl for another UNet
        why = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise usage(f"{flag}: {path} does not fit the base model ({why[:200]})") from None
    if missing or unexpected:
        raise usage(f"{flag}: {path} does not fit the base model ({'missing' if missing else 'unexpected'} "
                    f"{(missing or unexpected)[0]} and {len(missing or unexpected) - 1} more)")
    return net.eval()


def _load_motion(ref: ModelRef, dtype, device) -> tuple[dict, dict]:
    """(MotionAdapter config, state dict on the device) of a motion module."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    if ref.path.is_dir():
        config = {k: v for k, v in read_json(ref.path / "config.json").items() if not k.startswith("_")}
        return config, _on(load_state_dict(_weights_file(ref.path)), dtype, device)
    if ref.sniffed.layout != "animatediff-original":
        raise usage(f"{ref.path}: a single-file motion module in diffusers layout; "
                    "put it in a folder with its config.json")
    sd = load_state_dict(ref.path)
    config = motion_config_from_original(sd)
    # diffusers' converter drops the positional tables; keep them, some fine-tunes change them
    pe = {k.replace(".temporal_transformer", "").replace(".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe"): v
          for k, v in sd.items() if k.endswith("attention_blocks.0.pos_encoder.pe")}
    return config, _on({**convert_animatediff_checkpoint_to_diffusers(sd), **pe}, dtype, device)


def _motion_unet(unet2d_config: dict, motion_config: dict, sd: dict, spec: ModelSpec):
    """The UNetMotionModel of a base UNet and a motion module, built on the meta device and given
    their tensors (`sd`: both state dicts, whose keys the motion UNet's are) without a copy."""
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    try:
        with torch.device("meta"):
            unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_config(unet2d_config),
                                               MotionAdapter.from_config(motion_config), load_weights=False)
    except ValueError as e:  # diffusers' "Incompatible Motion Adapter, got different number of ..."
        raise usage(f"{spec.motion.path}: the motion module does not fit the base model ({e})") from None
    missing, unexpected = unet.load_state_dict(sd, strict=False, assign=True)
    for k in missing + unexpected:
        if ".motion_modules." in k:
            raise usage(f"{spec.motion.path}: motion module does not match the AnimateDiff layout ({k})")
        raise usage(f"{spec.base.path}: the UNet is incomplete or not SD1.5's ({k})")
    return unet.eval()


def _check_fits(spec: ModelSpec, unet2d_config: dict, motion_config: dict):
    ub = tuple(unet2d_config["block_out_channels"])
    ab = tuple(motion_config.get("block_out_channels", (320, 640, 1280, 1280)))  # MotionAdapter's default
    if ub != ab:
        raise usage(f"{spec.motion.path}: the motion module is for a UNet with channels {ab}, "
                    f"but the base model has {ub}")
    ctx = unet2d_config["cross_attention_dim"]
    for ref in [spec.lcm_lora, *spec.loras]:
        fam = ref.sniffed.family if ref.sniffed else None
        lctx = next((c for c, f in FAMILY_BY_CONTEXT.items() if f == fam), None)
        if fam and fam != "unknown" and lctx is None:
            m = re.search(r"cross-attention (\d+)", fam)
            lctx = int(m.group(1)) if m else None
        if lctx is not None and lctx != ctx:
            raise usage(f"{ref.path}: a LoRA for a model with cross-attention width {lctx}, "
                        f"but the base model has {ctx}")


def file_stamp(path: Path) -> tuple:
    """A model file's identity for reuse: one rewritten in place must be read again."""
    st = Path(path).stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def load(spec: ModelSpec, verbose: bool = False, quiet: bool = True, previous: Models | None = None) -> Models:
    """Load every model in `spec` into one AnimateDiff pipeline with the sampler's scheduler (LCM or TCD).

    `previous` (a Session's last set, given up by the caller) lends what it shares with `spec`: the
    same base is not read again, a changed motion module is assembled around the same base tensors,
    a changed VAE is read alone, and its LoRAs are unfused first. Nothing is copied."""
    configure(verbose)
    import torch
    from diffusers import AnimateDiffPipeline, LCMScheduler
    from tqdm import tqdm

    dtype, device = torch_dtype(spec.dtype), spec.device
    keys = {"base": (file_stamp(spec.base.path), spec.dtype, device),
            "motion": (file_stamp(spec.motion.path), spec.dtype, device),
            "vae": (file_stamp(spec.vae.path) if spec.vae else "base", spec.dtype, device)}
    old = previous if previous is not None and previous.keys.get("base") == keys["base"] else None
    bar = tqdm(total=3, desc="load", disable=quiet, leave=False)
    try:
        unet, motion_sd = None, None
        if old is not None:
            _drop_loras(old.pipe, old.fused)
            p = old.pipe
            vae, text_encoder, tokenizer, unet2d_config = p.vae, p.text_encoder, p.tokenizer, old.unet2d_config
            if old.keys.get("vae") != keys["vae"]:  # another VAE: read it alone, the old one let go first
                p.vae = vae = None
                vae = _load_vae(spec.vae, dtype, device) if spec.vae else _base_vae(spec.base, dtype, device)
            if old.keys["motion"] == keys["motion"]:
                unet, motion_config = p.unet, old.keys["motion_config"]
            else:
                motion_config, motion_sd = _load_motion(spec.motion, dtype, device)
                base_sd = {k: v for k, v in p.unet.state_dict(keep_vars=True).items() if ".motion_modules." not in k}
            old.pipe = p = None  # the old motion modules go as soon as the new UNet holds the base
        else:
            if previous is not None:
                previous.pipe = None  # another base: let the old weights go before reading the new ones
            unet2d_config, base_sd, vae, text_encoder, tokenizer = _load_base(spec.base, dtype, device,
                                                                              spec.vae is None)
            if spec.vae is not None:
                vae = _load_vae(spec.vae, dtype, device)
            bar.update()
            motion_config, motion_sd = _load_motion(spec.motion, dtype, device)
        _check_fits(spec, unet2d_config, motion_config)
        if unet is None:
            unet = _motion_unet(unet2d_config, motion_config, {**base_sd, **motion_sd}, spec)
            del base_sd, motion_sd
        bar.update()
        config = LCMScheduler.load_config(SD15_CONFIG, subfolder="scheduler")
        scheduler = make_scheduler(spec.sampler, {**config, **_noise_schedule(spec.base)})
        pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   motion_adapter=None, scheduler=scheduler, feature_extractor=None,
                                   image_encoder=None)
        bound_feed_forward(unet)
        table = _apply_embeddings(text_encoder, spec.embeddings, dtype, device)
        adapters = _apply_loras(pipe, spec, dtype, device)
        pipe.to(device)
        if device.startswith("cuda"):  # NHWC convolutions: cuDNN's fast path in half precision
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        bar.update()
    except torch.OutOfMemoryError:
        raise runtime(f"out of memory loading the models on {device} ({spec.dtype}); "
                      "try --dtype float16 or a smaller model") from None
    except OSError as e:
        raise runtime(f"could not load the models: {str(e).splitlines()[0]}") from None
    finally:
        bar.close()
    shared = 0.0
    if spec.motion.source == "embedded default":
        shared = embedded.sampling_defaults().get("shared_noise", 0.0)
    return Models(spec, pipe, unet.config.motion_max_seq_length, adapters, unet2d_config=dict(unet2d_config),
                  shared_noise=shared, keys={**keys, "motion_config": motion_config},
                  fused=spec.fuse and bool(_lora_refs(spec)), controlnets=old.controlnets if old else {},
                  embeddings=table, ip_adapters=old.ip_adapters if old else {})


def _lora_refs(spec: ModelSpec) -> list:
    return ([spec.lcm_lora] if spec.lcm_lora.sniffed else []) + spec.loras + spec.motion_loras


# a LoRA tensor's target layer and side: the attention processors' old layout (AnimateDiff's files) or peft's
# AnimateDiff's MotionLoRAs change the attention projections; peft's layout can hold a motion
# module's other Linears too (its proj_in/proj_out and feed-forward: the shapes family's LoRAs)
LORA_LEAF = re.compile(r"\.processor\.to_(?P<p>q|k|v|out)_lora\.(?P<d>down|up)\.weight$"
                       r"|\.to_(?P<p2>q|k|v|out)(?:\.0)?\.lora_(?P<d2>A|B)\.weight$"
                       r"|\.(?P<p3>proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2)\.lora_(?P<d3>A|B)\.weight$")


def motion_lora_to_diffusers(sd: dict) -> dict:
    """An original-layout MotionLoRA as diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py
    writes it (temporal_transformer. dropped, attention_blocks.0/1 -> attn1/attn2, unet. prefixed);
    diffusers' own layout passes through."""
    out = {}
    for k, v in sd.items():
        if "pos_encoder" in k:
            continue
        k = k.removeprefix("unet.").replace(".temporal_transformer", "")
        out["unet." + k.replace(".attention_blocks.0", ".attn1").replace(".attention_blocks.1", ".attn2")] = v
    return out


def _check_motion_lora(ref, sd: dict, unet):
    """Every layer the MotionLoRA changes is in the loaded motion module, with its shape: a v2 LoRA
    (which has a mid-block motion module) on a v1 or v3 module is refused, not half applied."""
    has_mid = any(".motion_modules." in n for n, _ in unet.mid_block.named_modules(prefix="mid_block")) \
        if getattr(unet, "mid_block", None) is not None else False
    if ref.sniffed.detail.get("mid_block") and not has_mid:
        raise usage(f"{ref.path}: a motion LoRA for a motion module with a mid-block module (AnimateDiff v2); "
                    "the loaded motion module has none (v1 or v3)")
    for k, v in sd.items():
        m = LORA_LEAF.search(k)
        if m is None or ".motion_modules." not in k:
            raise usage(f"{ref.path}: not a motion LoRA's tensor: {k}")
        proj, down = m.group("p") or m.group("p2"), (m.group("d") or m.group("d2") or m.group("d3")) in ("down", "A")
        name = k[len("unet."):m.start()] + (f".{m.group('p3')}" if m.group("p3") else
                                             ".to_out.0" if proj == "out" else f".to_{proj}")
        try:
            layer = unet.get_submodule(name)
        except AttributeError:
            raise usage(f"{ref.path}: a motion LoRA for another motion module (the loaded one has no {name})") from None
        dim, have = (layer.in_features, v.shape[1]) if down else (layer.out_features, v.shape[0])
        if have != dim:
            raise usage(f"{ref.path}: a motion LoRA for another motion module ({name} is {dim} wide here, "
                        f"{have} in the LoRA)")


def _lora_state_dict(ref, pipe, dtype, device) -> dict:
    """A LoRA's tensors as diffusers' load_lora_weights takes them."""
    sd = load_state_dict(ref.path)
    if ref.role == "motion_lora":
        sd = motion_lora_to_diffusers(sd)
        _check_motion_lora(ref, sd, pipe.unet)
    elif ref.sniffed.layout == "animatediff-adapter":  # v3_sd15_adapter.ckpt: the image UNet's layers, unprefixed
        sd = {"unet." + k: v for k, v in sd.items()}
    return _on(sd, dtype, device)


def _lora_layers(pipe):
    from peft.tuners.lora import LoraLayer

    for component in (pipe.unet, pipe.text_encoder):
        for module in component.modules():
            if isinstance(module, LoraLayer):
                yield module


def _delta(module, adapter: str):
    """One adapter's weight update of a peft LoRA layer: B @ A times its scale (alpha / rank x weight).
    peft computes a 3x3 conv LoRA's by a convolution of the weights; the same sum as one matmul is
    several times faster on a CPU, where fusing was half the load time of a full-size model."""
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    base = module.get_base_layer()
    if a.ndim == 2 or (b.shape[2:] == (1, 1) and getattr(base, "groups", 1) == 1):
        return (b.flatten(1) @ a.flatten(1)).view(base.weight.shape) * module.scaling[adapter]
    return module.get_delta_weight(adapter)


def _plain_lora(module) -> bool:
    """A LoRA layer whose update is only B @ A (no DoRA, bias or transposed weights): fused here."""
    return not (any(module.use_dora.values()) or any(getattr(module, "lora_bias", {}).values())
                or getattr(module, "fan_in_fan_out", False))


def _fuse_loras(pipe, names: list[str]):
    """Add every adapter's update into the weights; the adapters stay loaded (and idle), so that
    `_drop_loras` can take the same updates out again."""
    import torch

    with torch.no_grad():
        for module in _lora_layers(pipe):
            active = [n for n in names if n in module.lora_A]
            if not active:
                continue
            if not _plain_lora(module):
                module.merge(adapter_names=active)
                continue
            w = module.get_base_layer().weight
            for n in active:
                w += _delta(module, n)
            module.merged_adapters.extend(active)


def _drop_loras(pipe, fused: bool):
    """Take the LoRAs out again: their updates subtracted from the weights, then their adapters removed."""
    import torch

    if fused:
        with torch.no_grad():
            for module in _lora_layers(pipe):
                if not _plain_lora(module):
                    module.unmerge()
                    continue
                w = module.get_base_layer().weight
                while module.merged_adapters:
                    w -= _delta(module, module.merged_adapters.pop())
    if getattr(pipe.unet, "peft_config", None) or getattr(pipe.text_encoder, "peft_config", None):
        pipe.unload_lora_weights()


def _positional_projections(unet):
    """diffusers' motion modules call proj_in/proj_out as `proj_in(input=x)`, which a peft LoRA layer's
    forward (x, ...) does not take: the keyword becomes the argument before such a layer runs."""
    from peft.tuners.lora import LoraLayer

    def positional(module, args, kwargs):
        if not args and "input" in kwargs:
            return (kwargs.pop("input"),), kwargs
        return None

    for name, module in unet.named_modules():
        if ".motion_modules." in name and name.endswith((".proj_in", ".proj_out")) and isinstance(module, LoraLayer) \
                and not getattr(module, "_lcmvideo_positional", False):
            module.register_forward_pre_hook(positional, with_kwargs=True)
            module._lcmvideo_positional = True


def _apply_loras(pipe, spec: ModelSpec, dtype, device) -> dict:
    """LCM-LoRA and style LoRAs as peft adapters, weighted with set_adapters, fused unless told not to
    (fused, the adapters stay, so that a Session can unfuse them to change a LoRA).

    Returns which adapter carries which schedule parameter (empty once fused)."""
    names, weights, params = [], [], {}
    for i, ref in enumerate(_lora_refs(spec)):
        name = {"lcm_lora": "lcm", "motion_lora": f"motion{i}"}.get(ref.role, f"style{i}")
        try:
            # in the run's dtype: peft keeps the tensors it is given (a file's fp16 would stay fp16)
            pipe.load_lora_weights(_lora_state_dict(ref, pipe, dtype, device), adapter_name=name,
                                   low_cpu_mem_usage=True)
        except (ValueError, KeyError, RuntimeError) as e:
            what = "motion LoRA does not fit the motion module" if ref.role == "motion_lora" else \
                "LoRA does not fit the base model"
            raise usage(f"{ref.path}: {what} ({str(e).splitlines()[0][:200]})") from None
        names.append(name)
        weights.append(spec.lcm_lora_scale if ref.role == "lcm_lora" else ref.weight)
        params["lcm_lora_scale" if ref.role == "lcm_lora" else f"lora:{ref.key}"] = name
    if not names:
        return {}
    _positional_projections(pipe.unet)
    pipe.set_adapters(names, adapter_weights=weights)
    if spec.fuse:
        _fuse_loras(pipe, names)
        return {}
    return params
