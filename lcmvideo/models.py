"""Finding, recognising and loading models, offline, from every layout users have.

`resolve` turns what the user wrote (a path, a Hugging Face id already in the cache, a
name inside an A1111/ComfyUI folder, or nothing) into a `ModelSpec` without importing
torch or diffusers. `sniff` reads only a file's header to tell what it is. `load` builds
one AnimateDiff pipeline with the LCM scheduler and the LoRAs applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import runtime, usage
from .paths import DATA, cache_dir

WEIGHT_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
SD15_CONFIG = DATA / "sd15"
FAMILY_BY_CONTEXT = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}

# Where A1111 (stable-diffusion-webui) and ComfyUI keep each kind of model, relative to
# the folder the user points at (the app's root or its models/ folder).
MODEL_FOLDERS = {
    "base": ["models/Stable-diffusion", "models/checkpoints", "Stable-diffusion", "checkpoints"],
    "motion": ["models/animatediff_models", "animatediff_models", "models/AnimateDiff", "AnimateDiff",
               "models/animatediff", "extensions/sd-webui-animatediff/model",
               "custom_nodes/ComfyUI-AnimateDiff-Evolved/models"],
    "lora": ["models/Lora", "models/loras", "Lora", "loras"],
    "controlnet": ["models/ControlNet", "models/controlnet", "ControlNet", "controlnet",
                   "extensions/sd-webui-controlnet/models"],
}
MOTION_PREFERENCE = ["mm_sd_v15_v2", "v3_sd15_mm", "mm_sd_v15", "mm_sd_v14"]


# ---------------------------------------------------------------- what a file is


@dataclass
class Sniffed:
    kind: str  # base | motion | lora | controlnet
    layout: str  # diffusers | ldm | animatediff-original | kohya | peft
    family: str  # SD1.5 | SD2.x | SDXL | SD1.5-structured (tiny) ...
    file: Path  # the file or folder to load
    detail: dict = field(default_factory=dict)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header, without torch; catches truncation."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise ValueError("header length is past the end of the file")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise runtime(f"{path}: unreadable or truncated .safetensors file ({e})") from None
    except OSError as e:
        raise runtime(f"{path}: cannot read: {e.strerror}") from None
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end > size:
        raise runtime(f"{path}: truncated .safetensors file ({size} bytes, the header needs {8 + n + end})")
    return {k: t["shape"] for k, t in header.items()}


def load_state_dict(path: Path) -> dict:
    """All tensors of a weights file. Pickle files are opened with weights_only=True: never full unpickling."""
    import torch

    if path.suffix == ".safetensors":
        safetensors_shapes(path)  # clear error for truncated files before safetensors' own
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise runtime(f"{path}: unreadable .safetensors file ({e})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise runtime(f"{path}: holds pickled objects beyond plain tensors; lcmvideo will not unpickle them. "
                          "Convert the file to .safetensors") from None
        raise runtime(f"{path}: unreadable or truncated weights file ({msg})") from None
    while isinstance(sd, dict) and len(sd) < 8 and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise usage(f"{path}: does not hold a dictionary of tensors")
    return {k: v for k, v in sd.items() if hasattr(v, "shape")}


def _shapes(path: Path) -> dict[str, list[int]]:
    if path.suffix == ".safetensors":
        return safetensors_shapes(path)
    return {k: list(v.shape) for k, v in load_state_dict(path).items()}


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise usage(f"{path}: unreadable config ({e})") from None


def sniff(path: Path) -> Sniffed:
    """What a file or diffusers folder holds, from headers and configs only."""
    path = Path(path)
    if path.is_dir():
        if (path / "model_index.json").exists():
            unet_cfg = path / "unet" / "config.json"
            if not unet_cfg.exists():
                raise usage(f"{path}: a diffusers pipeline folder without unet/config.json")
            cfg = _read_json(unet_cfg)
            if cfg.get("addition_embed_type") or cfg.get("_class_name") == "UNetMotionModel":
                fam = "SDXL" if cfg.get("addition_embed_type") else "SD1.5 (AnimateDiff UNet)"
                return Sniffed("base", "diffusers", fam, path, {"config": cfg})
            return Sniffed("base", "diffusers", _family(cfg.get("cross_attention_dim")), path, {"config": cfg})
        if (path / "config.json").exists():
            cfg = _read_json(path / "config.json")
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
    return classify(_shapes(path), path)


# ---------------------------------------------------------------- what to use


@dataclass
class ModelRef:
    role: str  # base | motion | lcm_lora | lora
    given: str | None  # what the user wrote
    source: str  # flag | schedule | env NAME | embedded default | found in DIR
    sniffed: Sniffed | None = None  # None for "none"
    weight: float = 1.0
    key: str = ""  # a style LoRA's name in schedules (lora_weights)

    @property
    def path(self) -> Path | None:
        return self.sniffed.file if self.sniffed else None


@dataclass
class ModelSpec:
    base: ModelRef
    motion: ModelRef
    lcm_lora: ModelRef
    loras: list[ModelRef]
    lcm_lora_scale: float = 1.0
    device: str = "cpu"
    dtype: str = "float32"
    fuse: bool = True
    embedded: bool = False
    models_dir: Path | None = None

    def refs(self) -> list[ModelRef]:
        return [self.base, self.motion, self.lcm_lora, *self.loras]


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub id, if it is in the HF cache (HF_HOME/HF_HUB_CACHE); never downloads."""
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means "not in the cache"
        return None


def discover(models_dir: Path) -> dict[str, list[Path]]:
    """Model files and diffusers folders in an A1111/ComfyUI tree, by role."""
    found: dict[str, list[Path]] = {role: [] for role in MODEL_FOLDERS}
    for role, subdirs in MODEL_FOLDERS.items():
        seen = set()
        for sub in subdirs:
            d = models_dir / sub
            if not d.is_dir():
                continue
            for p in sorted(d.rglob("*")):
                real = p.resolve()
                if real in seen:
                    continue
                if (p.is_file() and p.suffix.lower() in WEIGHT_EXTS and p.parent.name != "snapshots") or (
                        p.is_dir() and ((p / "model_index.json").exists() or (p / "config.json").exists())):
                    seen.add(real)
                    found[role].append(p)
    return found


def _by_name(name: str, candidates: list[Path]) -> Path | None:
    low = name.lower()
    for p in candidates:
        if low in (p.name.lower(), p.stem.lower()):
            return p
    return None


def _find(role: str, given: str, flag: str, models_dir: Path | None, found: dict) -> Path:
    p = Path(given).expanduser()
    if p.exists():
        return p
    snap = hf_cache_snapshot(given)
    if snap is not None:
        if role in ("lcm_lora", "lora"):
            files = sorted(snap.glob("*.safetensors"))
            return files[0] if len(files) == 1 else snap
        return snap
    if models_dir is not None:
        hit = _by_name(given, found.get("lora" if role == "lcm_lora" else role, []))
        if hit:
            return hit
    where = f", or a name in {models_dir}" if models_dir else " (or set LCMVIDEO_MODELS_DIR to find it by name)"
    raise usage(f"{flag}: '{given}' is not a file, a folder, a model in the Hugging Face cache{where}")


EXPECTED = {"base": "base", "motion": "motion", "lcm_lora": "lora", "lora": "lora", "controlnet": "controlnet"}
FLAGS = {"base": "--model", "motion": "--motion", "lcm_lora": "--lcm-lora", "lora": "--lora",
         "controlnet": "--controlnet"}
CONTROLNET_SD15_CONFIG = DATA / "controlnet_sd15"


def _ref(role: str, given: str, source: str, models_dir, found, weight=1.0, flag=None) -> ModelRef:
    flag = flag or (FLAGS[role] if source == "flag" else f"models.{'loras' if role == 'lora' else role}")
    path = _find(role, given, flag, models_dir, found)
    s = sniff(path)
    want = EXPECTED[role]
    if s.kind != want:
        hint = {"lora": "--lora or --lcm-lora", "motion": "--motion", "base": "--model", "controlnet": "--controlnet"}
        raise usage(f"{flag}: {path} is a {s.kind} model ({s.layout} layout), not a {want} model; "
                    f"pass it with {hint[s.kind]}")
    if s.family in ("SDXL", "SD2.x") or s.family.startswith("SD1.5 (AnimateDiff"):
        raise usage(f"{flag}: {path} is a {s.family} {s.kind} model; lcmvideo runs Stable Diffusion 1.5 models only")
    if s.kind == "base" and s.detail.get("in_channels", 4) not in (4, 0):
        raise usage(f"{flag}: {path} is an inpainting checkpoint ({s.detail['in_channels']} input channels); "
                    "use a plain SD1.5 checkpoint")
    return ModelRef(role, given, source, s, weight)


def _pick_discovered(role: str, found: list[Path], models_dir: Path) -> Path | None:
    if role == "lcm_lora":
        found = [p for p in found if "lcm" in p.name.lower()]
    if len(found) == 1:
        return found[0]
    if role == "motion":
        for pref in MOTION_PREFERENCE:
            for p in found:
                if pref in p.name.lower():
                    return p
    return None


def resolve(settings_models, sources: dict | None = None, env=os.environ) -> ModelSpec:
    """ModelPaths (+ where each value came from) -> ModelSpec. Precedence: flag > schedule > env > default."""
    from . import tiny

    m = settings_models
    sources = sources or {}
    models_dir = m.models_dir or env.get("LCMVIDEO_MODELS_DIR")
    if models_dir:
        models_dir = Path(models_dir).expanduser()
        if not models_dir.is_dir():
            flag = "--models-dir" if m.models_dir else "LCMVIDEO_MODELS_DIR"
            raise usage(f"{flag}: {models_dir} is not a folder")
    found = discover(models_dir) if models_dir else {}

    def given(key, env_name):
        v = getattr(m, key)
        if v is not None:
            return v, sources.get(key, "schedule")
        if env.get(env_name):
            return env[env_name], f"env {env_name}"
        return None, None

    base_given, base_src = given("base", "LCMVIDEO_MODEL")
    embedded = base_given is None
    tiny_dir = tiny.ensure() if embedded else None
    if embedded:
        base = ModelRef("base", None, "embedded default", sniff(tiny_dir))
    else:
        base = _ref("base", base_given, base_src, models_dir, found)

    def companion(role, key, env_name, tiny_sub):
        g, src = given(key, env_name)
        if g is not None and g.lower() == "none" and role == "lcm_lora":
            return ModelRef(role, "none", src, None)
        if g is not None:
            return _ref(role, g, src, models_dir, found)
        if embedded:
            return ModelRef(role, None, "embedded default", sniff(tiny_dir / tiny_sub))
        pick = _pick_discovered(role, found.get("lora" if role == "lcm_lora" else role, []), models_dir) \
            if models_dir else None
        if pick is not None:
            return ModelRef(role, str(pick), f"found in {models_dir}", sniff(pick))
        need = {"motion": "--motion PATH (an AnimateDiff module such as mm_sd_v15_v2.ckpt)",
                "lcm_lora": "--lcm-lora PATH (lcm-lora-sdv1-5), or --lcm-lora none for an LCM-distilled model"}
        raise usage(f"a real base model needs {need[role]}")

    motion = companion("motion", "motion", "LCMVIDEO_MOTION", "motion_adapter")
    lcm = companion("lcm_lora", "lcm_lora", "LCMVIDEO_LCM_LORA", "lcm_lora")
    loras = [_ref("lora", r.path, sources.get("loras", "schedule"), models_dir, found, r.weight) for r in m.loras]
    for ref, r in zip(loras, m.loras):
        ref.key = r.key
    device, dtype = pick_device(m.device, m.dtype)
    return ModelSpec(base, motion, lcm, loras, m.lcm_lora_scale, device, dtype, m.fuse, embedded, models_dir)


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """CUDA fp16, else MPS fp16, else CPU fp32, unless told otherwise."""
    dtypes = {"auto", "float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16"}
    if dtype not in dtypes:
        raise usage(f"--dtype: '{dtype}' is not one of auto, float32, float16, bfloat16")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise usage(f"--device: '{device}' is not one of auto, cpu, cuda, cuda:N, mps")
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise usage(f"--device: {device} asked for, but this torch build sees no CUDA GPU")
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise usage("--device: mps asked for, but MPS is not available here")
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    dtype = aliases.get(dtype, dtype)
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "float16"
    return device, dtype


def resolve_controlnet(given: str | None, spec: ModelSpec, flag: str, source: str = "schedule") -> ModelRef:
    """A ControlNet model; with the embedded base and none named, the embedded tiny ControlNet."""
    if given is None or given.lower() in ("embedded", "default"):
        if not spec.embedded:
            raise usage(f"{flag}: name a ControlNet model (e.g. control_v11p_sd15_openpose.safetensors); "
                        "the embedded one fits only the embedded base model")
        from . import tiny

        return ModelRef("controlnet", None, "embedded default", sniff(tiny.ensure() / "controlnet"))
    found = discover(spec.models_dir) if spec.models_dir else {}
    return _ref("controlnet", given, source, spec.models_dir, found, flag=flag)


# ---------------------------------------------------------------- hashes for the sidecar


def sha256_prefix(path: Path, n: int = 12) -> str:
    """sha256 of a file, or of a folder's weight files in name order; cached by size+mtime."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_EXTS + (".json",)) \
        if path.is_dir() else [path]
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    db_path = cache_dir() / "hashes.json"
    try:
        db = json.loads(db_path.read_text())
    except (OSError, ValueError):
        db = {}
    if key not in db:
        h = hashlib.sha256()
        for p in files:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        db[key] = h.hexdigest()
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = db_path.with_name(f".hashes{os.getpid()}.json")
            tmp.write_text(json.dumps(db))
            os.replace(tmp, db_path)
        except OSError:
            pass  # a read-only cache only costs re-hashing
    return db[key][:n]


def describe(spec: ModelSpec) -> dict:
    """What the sidecar records about the models: enough to find the same files again."""
    out = {}
    for ref in spec.refs():
        name = ref.role if ref.role != "lora" else f"lora:{ref.given}"
        if ref.sniffed is None:
            out[name] = {"path": None, "source": ref.source}
            continue
        out[name] = {"path": str(ref.path), "layout": ref.sniffed.layout, "family": ref.sniffed.family,
                     "sha256": sha256_prefix(ref.path), "source": ref.source}
        if ref.role == "lora":
            out[name]["weight"] = ref.weight
    out["device"], out["dtype"], out["fused"] = spec.device, spec.dtype, spec.fuse
    if spec.embedded:
        from . import tiny

        out["embedded"] = tiny.version()
    return out


# ---------------------------------------------------------------- loading


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


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _configure_libraries(verbose: bool = False):
    # Offline by construction: nothing we load may reach a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    import diffusers
    import transformers

    level = 20 if verbose else 40
    diffusers.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", module=r"(diffusers|transformers|peft|torch)\b")


def _single_file_config(channels: int, path: Path, kind: str) -> Path:
    """The shipped SD1.5 configs or the embedded tiny family's, whichever has these base channels."""
    from . import tiny

    sd15, small, config = ((SD15_CONFIG, tiny.ensure(), "unet/config.json") if kind == "base"
                           else (CONTROLNET_SD15_CONFIG, tiny.ensure() / "controlnet", "config.json"))
    for candidate in (sd15, small):
        if _read_json(candidate / config)["block_out_channels"][0] == channels:
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
    cfg = _read_json(path)
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
        cn = ControlNetModel.from_config(_read_json(config / "config.json"))
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
    _configure_libraries(verbose)
    import torch
    from diffusers import AnimateDiffPipeline, LCMScheduler
    from tqdm import tqdm

    dtype = _torch_dtype(spec.dtype)
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
    except (OSError, EnvironmentError) as e:
        raise runtime(f"could not load the models: {str(e).splitlines()[0]}") from None
    finally:
        bar.close()
    shared = 0.0
    if spec.motion.source == "embedded default":
        from . import tiny

        shared = tiny.sampling_defaults().get("shared_noise", 0.0)
    return Models(spec, pipe, adapter.config.motion_max_seq_length, adapters, unet2d_config=dict(unet.config),
                  shared_noise=shared)


def _apply_loras(pipe, spec: ModelSpec, parts: dict | None = None) -> dict:
    """LCM-LoRA and style LoRAs as peft adapters, weighted with set_adapters, fused unless told not to.

    Returns which adapter carries which schedule parameter (empty once fused)."""
    names, weights, params = [], [], {}
    refs = ([spec.lcm_lora] if spec.lcm_lora.sniffed else []) + spec.loras
    for i, ref in enumerate(refs):
        name = "lcm" if ref.role == "lcm_lora" else f"style{i}"
        sd = dict(_from(parts, ("lora", file_stamp(ref.path)), lambda: load_state_dict(ref.path)))
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
