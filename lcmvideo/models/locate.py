"""What to use: the user's words (a path, a Hugging Face id already in the cache, a name in an
A1111/ComfyUI folder, or nothing) turned into a ModelSpec, without importing diffusers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LcmvideoError, usage
from ..paths import DATA
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
    # ComfyUI-AnimateDiff-Evolved's motion_lora folder (and ComfyUI's models/animatediff_motion_lora);
    # sd-webui-animatediff keeps motion LoRAs with the other LoRAs in models/Lora, searched too
    "motion_lora": ["models/animatediff_motion_lora", "animatediff_motion_lora",
                    "custom_nodes/ComfyUI-AnimateDiff-Evolved/motion_lora", "models/MotionLoRA"],
    "controlnet": ["models/ControlNet", "models/controlnet", "ControlNet", "controlnet",
                   "extensions/sd-webui-controlnet/models"],
    # SparseCtrl: where ComfyUI-Advanced-ControlNet (models/controlnet) and sd-webui-controlnet
    # (models/ControlNet) read it, and the AnimateDiff repository's own models/SparseCtrl
    "sparsectrl": ["models/ControlNet", "models/controlnet", "ControlNet", "controlnet",
                   "extensions/sd-webui-controlnet/models", "models/SparseCtrl", "SparseCtrl", "models/sparsectrl",
                   "sparsectrl"],
    # A1111 models/VAE and models/VAE-approx (TAESD), ComfyUI models/vae and models/vae_approx (TAESD)
    "vae": ["models/VAE", "models/vae", "VAE", "vae", "models/VAE-approx", "models/vae_approx", "VAE-approx",
            "vae_approx"],
    "embedding": ["embeddings", "models/embeddings"],  # A1111's (in its root) and ComfyUI's
    # ComfyUI_IPAdapter_plus's models/ipadapter (A1111's sd-webui-controlnet keeps them in models/ControlNet)
    "ip_adapter": ["models/ipadapter", "ipadapter", "models/ip_adapter", "ip_adapter"],
    "clip_vision": ["models/clip_vision", "clip_vision", "extensions/sd-webui-controlnet/annotator/downloads/clip_vision"],
}
MOTION_PREFERENCE = ["mm_sd_v15_v2", "v3_sd15_mm", "mm_sd_v15", "mm_sd_v14"]


@dataclass
class ModelRef:
    role: str  # base | motion | lcm_lora | lora | motion_lora | vae | embedding
    given: str | None  # what the user wrote
    source: str  # flag | schedule | env NAME | embedded default | found in DIR
    sniffed: Sniffed | None = None  # None for "none"
    weight: float = 1.0
    key: str = ""  # a style LoRA's name in schedules (lora_weights); an embedding's name in prompts

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
    vae: ModelRef | None = None  # None: the base model's own VAE
    embeddings: list[ModelRef] = field(default_factory=list)  # named (--embedding) and found in models_dir
    embedding_dirs: list[Path] = field(default_factory=list)  # where embedding:NAME was looked for
    notes: list[str] = field(default_factory=list)  # files found but not usable, said once by a Session
    clip_skip: int = 1
    sampler: str = "lcm"
    gamma: float = 0.3
    lcm_map: object = None  # schedule.LcmMap
    motion_loras: list[ModelRef] = field(default_factory=list)
    # loaded on first use beside the set (as ControlNets are), so not one of refs()
    sparsectrl: ModelRef | None = None

    def refs(self) -> list[ModelRef]:
        """The model files the weights come from (embeddings aside)."""
        return [self.base, self.motion, self.lcm_lora, *self.loras, *self.motion_loras,
                *([self.vae] if self.vae else [])]


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
    for p in candidates:  # "taesd" names the pair taesd_decoder.* + taesd_encoder.*, as in ComfyUI
        if p.stem.lower() == low + "_decoder":
            return p
    return None


def _find(role: str, given: str, flag: str, models_dir: Path | None, found: dict) -> Path:
    p = Path(given).expanduser()
    if p.exists():
        return p
    snap = hf_cache_snapshot(given)
    if snap is not None:
        if role in ("lcm_lora", "lora", "motion_lora"):
            files = sorted(snap.glob("*.safetensors"))
            return files[0] if len(files) == 1 else snap
        return snap
    if models_dir is not None:
        hit = _by_name(given, _candidates(role, found))
        if hit:
            return hit
    if role == "vae" and given.lower() in ("taesd", "taesdxl"):
        where = f"in {models_dir}'s " + ", ".join(MODEL_FOLDERS["vae"][4:6]) if models_dir else \
            "(give --models-dir, or the path of taesd_decoder.pth or of a diffusers AutoencoderTiny folder)"
        raise usage(f"{flag}: '{given}': no {given}_decoder.pth/.safetensors found {where}")
    where = f", or a name in {models_dir}" if models_dir else " (or set LCMVIDEO_MODELS_DIR to find it by name)"
    raise usage(f"{flag}: '{given}' is not a file, a folder, a model in the Hugging Face cache{where}")


def _candidates(role: str, found: dict) -> list[Path]:
    """The discovered files a name is looked up among: motion LoRAs also in the LoRA and motion folders."""
    if role == "motion_lora":
        return found.get("motion_lora", []) + found.get("lora", []) + found.get("motion", [])
    return found.get("lora" if role == "lcm_lora" else role, [])


EXPECTED = {"base": "base", "motion": "motion", "lcm_lora": "lora", "lora": "lora", "controlnet": "controlnet",
            "sparsectrl": "sparsectrl",
            "vae": "vae", "embedding": "embedding", "motion_lora": "motion_lora", "ip_adapter": "ip_adapter",
            "clip_vision": "clip_vision"}
FLAGS = {"base": "--model", "motion": "--motion", "lcm_lora": "--lcm-lora", "lora": "--lora",
         "controlnet": "--controlnet", "sparsectrl": "--sparsectrl",
         "vae": "--vae", "embedding": "--embedding", "motion_lora": "--motion-lora",
         "ip_adapter": "--ip-adapter", "clip_vision": "--ip-encoder"}
KEYS = {"lora": "loras", "embedding": "embeddings", "motion_lora": "motion_loras"}  # schedule key, where not the role
SHAPES_MOTION_LORAS = DATA / "shapes" / "motion_lora"  # embedded:<direction>.safetensors
SHAPES_DIRECTIONS = ("right", "left", "up", "down")


def _ref(role: str, given: str, source: str, models_dir, found, weight=1.0, flag=None) -> ModelRef:
    flag = flag or (FLAGS[role] if source == "flag" else f"models.{KEYS.get(role, role)}")
    path = _embedded_motion_lora(given, flag) if role == "motion_lora" and given.lower().startswith("embedded:") \
        else _find(role, given, flag, models_dir, found)
    s = sniff(path)
    want = EXPECTED[role]
    if s.kind != want:
        hint = {"lora": "--lora or --lcm-lora", "motion_lora": "--motion-lora",
                "motion": "--motion", "base": "--model", "controlnet": "--controlnet",
                "sparsectrl": "--sparsectrl (with --init-image)",
                "vae": "--vae", "embedding": "--embedding (or put it in the embeddings folder)",
                "ip_adapter": "--ip-adapter", "clip_vision": "--ip-encoder (the IP-Adapter's image encoder)"}
        kind = "SparseCtrl" if s.kind == "sparsectrl" else s.kind.replace("_", " ")
        want = "SparseCtrl" if want == "sparsectrl" else want
        raise usage(f"{flag}: {path} is {'an' if s.kind == 'embedding' else 'a'} {kind} model ({s.layout} layout), "
                    f"not {'an' if want == 'embedding' else 'a'} {want} model; pass it with {hint[s.kind]}")
    if s.family in ("SDXL", "SD2.x") or s.family.startswith(("SD1.5 (AnimateDiff", "SD3", "unknown (")):
        what = {"vae": "VAE", "ip_adapter": "IP-Adapter", "sparsectrl": "SparseCtrl"}.get(s.kind, f"{s.kind} model")
        why = f" ({s.family.split('(', 1)[1].rstrip(')')})" if s.family.startswith("unknown (") else \
            f" ({s.detail['because']})" if s.detail.get("because") else ""
        fam = "a VAE of unknown family" if s.family.startswith("unknown (") else f"a {s.family} {what}"
        raise usage(f"{flag}: {path} is {fam}{why}; lcmvideo runs Stable Diffusion 1.5 models only")
    if s.kind == "vae" and s.layout == "taesd":
        s = _taesd_pair(s, flag)
    if s.kind == "base" and s.detail.get("in_channels", 4) not in (4, 0):
        raise usage(f"{flag}: {path} is an inpainting checkpoint ({s.detail['in_channels']} input channels); "
                    "use a plain SD1.5 checkpoint")
    return ModelRef(role, given, source, s, weight)


def _embedded_motion_lora(given: str, flag: str) -> Path:
    """embedded:right|left|up|down: the shapes family's own motion LoRAs, shipped with the package."""
    name = given.split(":", 1)[1].lower()
    if name not in SHAPES_DIRECTIONS:
        raise usage(f"{flag}: '{given}': the embedded motion LoRAs are {', '.join('embedded:' + d for d in SHAPES_DIRECTIONS)}")
    path = SHAPES_MOTION_LORAS / f"{name}.safetensors"
    if not path.is_file():
        raise usage(f"{flag}: '{given}': this build ships no {path.name} in {SHAPES_MOTION_LORAS}")
    return path


def _taesd_pair(s: Sniffed, flag: str) -> Sniffed:
    """madebyollin's TAESD comes as two files: the decoder is loaded, the encoder beside it (for
    restyle and live, which encode frames) when there."""
    part = s.detail["part"]
    other = "encoder" if part == "decoder" else "decoder"
    stem = s.file.stem.lower()
    twin = next((p for p in sorted(s.file.parent.iterdir()) if p.suffix.lower() in WEIGHT_EXTS
                 and p.stem.lower() == stem.replace(part, other)), None) if part in stem else None
    if part == "encoder":
        if twin is None:
            raise usage(f"{flag}: {s.file} is TAESD's encoder; decoding needs its decoder "
                        f"({stem.replace('encoder', 'decoder')}.pth) beside it")
        decoder = sniff(twin)
        decoder.detail["encoder_file"] = s.file
        return decoder
    s.detail["encoder_file"] = twin
    return s


def _embedding_refs(m, sources: dict, models_dir: Path | None, found: dict) -> tuple[list, list, list]:
    """(the embeddings: named ones first, then those found in models_dir; folders searched; notes).
    Found files that are not SD1.5 textual-inversion embeddings are passed over with a note."""
    refs, notes, names = [], [], set()
    for given in m.embeddings:
        ref = _ref("embedding", given, sources.get("embeddings", "schedule"), models_dir, found)
        ref.key = Path(ref.path).stem
        if ref.key.lower() not in names:
            names.add(ref.key.lower())
            refs.append(ref)
    dirs = [models_dir / sub for sub in MODEL_FOLDERS["embedding"] if (models_dir / sub).is_dir()] \
        if models_dir else []
    for p in found.get("embedding", []):
        if p.stem.lower() in names or not p.is_file():
            continue
        try:
            s = sniff(p)
        except LcmvideoError as e:
            notes.append(f"{p}: not used as an embedding ({e.message.removeprefix(str(p) + ': ')})")
            continue
        if s.kind != "embedding" or s.family not in ("SD1.5",) and not s.family.startswith("SD1.5-structured"):
            notes.append(f"{p}: not used as an embedding (a {s.family} {s.kind} file)")
            continue
        names.add(p.stem.lower())
        refs.append(ModelRef("embedding", p.name, f"found in {models_dir}", s, key=p.stem))
    return refs, dirs, notes


def _pick_discovered(role: str, found: list[Path], models_dir: Path) -> Path | None:
    if role == "lcm_lora":
        found = [p for p in found if "lcm" in p.name.lower()]
    if role == "motion":  # AnimateDiff's SparseCtrl files are often kept beside its motion modules
        found = [p for p in found if "sparsectrl" not in p.name.lower()]
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
    motion_loras = [_ref("motion_lora", r.path, sources.get("motion_loras", "schedule"), models_dir, found, r.weight)
                    for r in m.motion_loras]
    for ref, r in zip(loras + motion_loras, m.loras + m.motion_loras):
        ref.key = r.key
    vae = None
    if m.vae is not None and m.vae.lower() not in ("none", "base", "default"):
        vae = _ref("vae", m.vae, sources.get("vae", "schedule"), models_dir, found)
    embeddings, dirs, notes = _embedding_refs(m, sources, models_dir, found)
    sparse = None
    if m.sparsectrl is not None and m.sparsectrl.lower() != "none":
        sparse = resolve_sparsectrl(m.sparsectrl, models_dir, found, sources.get("sparsectrl", "schedule"))
    device, dtype = pick_device(m.device, m.dtype)
    return ModelSpec(base, motion, lcm, loras, m.lcm_lora_scale, device, dtype, m.fuse, is_embedded, models_dir,
                     vae=vae, embeddings=embeddings, embedding_dirs=dirs, notes=notes, clip_skip=m.clip_skip,
                     sampler=m.sampler, gamma=m.gamma, lcm_map=m.lcm_map, motion_loras=motion_loras,
                     sparsectrl=sparse)


def sparsectrl_flag(source: str) -> str:
    return "--sparsectrl" if source == "flag" else "models.sparsectrl"


def resolve_sparsectrl(given: str, models_dir: Path | None, found: dict, source: str = "schedule") -> ModelRef:
    """A SparseCtrl RGB model (a path, an HF cache id, or a name in the ControlNet/SparseCtrl folders);
    a scribble SparseCtrl is refused: its condition is a drawing, and lcmvideo conditions on the init image."""
    flag = sparsectrl_flag(source)
    ref = _ref("sparsectrl", given, source, models_dir, found, flag=flag)
    d = ref.sniffed.detail
    if d["condition"] != "rgb":
        raise usage(f"{flag}: {ref.path} is a scribble SparseCtrl (its condition is a {d['input_channels'] - 1}-"
                    "channel image, not a latent); only SparseCtrl RGB (v3_sd15_sparsectrl_rgb) is supported")
    return ref


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


def resolve_ip_adapter(ip, spec: ModelSpec, sources: dict | None = None) -> tuple[ModelRef, ModelRef]:
    """An IP-Adapter (schedule.IpAdapterSpec) -> (its ModelRef, its CLIP image encoder's). The encoder:
    the one named, else an image_encoder/ folder beside the adapter or one level up (h94/IP-Adapter's
    layout), else the one in models_dir's clip_vision folders whose width fits."""
    sources = sources or {}
    flag = "--ip-adapter" if sources.get("ip_adapter") == "flag" else "ip_adapter.model"
    enc_flag = "--ip-encoder" if sources.get("ip_encoder") == "flag" else "ip_adapter.encoder"
    found = discover(spec.models_dir) if spec.models_dir else {}
    ref = _ref("ip_adapter", ip.model, sources.get("ip_adapter", "schedule"), spec.models_dir, found, flag=flag)
    d = ref.sniffed.detail
    if d["feature"] is None:
        raise usage(f"{flag}: {ref.path} is an {ref.sniffed.layout} IP-Adapter (it needs face-recognition "
                    "embeddings); lcmvideo takes ip-adapter, ip-adapter-plus and ip-adapter-full-face files")
    if ip.encoder is not None:
        return ref, _ref("clip_vision", ip.encoder, sources.get("ip_encoder", "schedule"), spec.models_dir, found,
                         flag=enc_flag)
    want = {"image_embeds": "projection_dim", "hidden_states": "hidden_size"}[d["feature"]]
    here = Path(ref.path).parent
    candidates = [here / "image_encoder", here.parent / "image_encoder"] + found.get("clip_vision", [])
    for p in candidates:
        if not p.exists():
            continue
        try:
            s = sniff(p)
        except LcmvideoError:
            continue
        if s.kind == "clip_vision" and s.detail.get(want) == d["image_width"]:
            return ref, ModelRef("clip_vision", None, f"found beside {ref.path.name}" if p.parent in (
                here, here.parent) else f"found in {spec.models_dir}", s)
    where = f", or put one in {spec.models_dir}/models/clip_vision" if spec.models_dir else \
        " (or give --models-dir with a models/clip_vision folder)"
    raise usage(f"{flag}: no CLIP image encoder found for {ref.path.name} (one with {want} "
                f"{d['image_width']}); name one with {'--ip-encoder' if flag.startswith('--') else 'ip_adapter.encoder'}: "
                f"a CLIPVisionModelWithProjection folder such as h94/IP-Adapter's "
                f"models/image_encoder, or a clip_vision file{where}")
