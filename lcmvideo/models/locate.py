"""What to use: the user's words (a path, a Hugging Face id already in the cache, a name in an
A1111/ComfyUI folder, or nothing) turned into a ModelSpec, without importing diffusers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import usage
from . import embedded
from .identify import Sniffed, sniff
from .weights import WEIGHT_EXTS

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
    is_embedded = base_given is None
    tiny_dir = embedded.ensure() if is_embedded else None
    if is_embedded:
        base = ModelRef("base", None, "embedded default", sniff(tiny_dir))
    else:
        base = _ref("base", base_given, base_src, models_dir, found)

    def companion(role, key, env_name, tiny_sub):
        g, src = given(key, env_name)
        if g is not None and g.lower() == "none" and role == "lcm_lora":
            return ModelRef(role, "none", src, None)
        if g is not None:
            return _ref(role, g, src, models_dir, found)
        if is_embedded:
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
    return ModelSpec(base, motion, lcm, loras, m.lcm_lora_scale, device, dtype, m.fuse, is_embedded, models_dir)


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
        return ModelRef("controlnet", None, "embedded default", sniff(embedded.ensure() / "controlnet"))
    found = discover(spec.models_dir) if spec.models_dir else {}
    return _ref("controlnet", given, source, spec.models_dir, found, flag=flag)
