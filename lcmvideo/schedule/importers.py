"""Schedules in the formats users already have, turned into lcmvideo's own (dicts for from_dict).

- animatediff-cli-prompt-travel JSON: `prompt_map` + `head_prompt`/`tail_prompt` (one clip), and the
  older AnimateDiff format it still ships (`prompt`/`prompts` lists, one clip per prompt: a batch);
  models, LoRAs (plain and per-frame `scale` keyframes), motion LoRAs, `lcm_map`, `controlnet_map`,
  `ip_adapter_map`, `img2img_map`, `output`
- the A1111 prompt box of sd-webui-animatediff: head lines, `N: prompt` lines, tail lines.

Each importer returns clips: [(dict, notes)]. Whatever has no counterpart is named in the notes,
never dropped silently. The tool's paths are relative to its `data/` folder: they are resolved
there when that folder is found beside the config (config/prompts/x.json -> data/).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from ..errors import usage
from .parse import is_number
from .settings import ModelPaths, Settings

KEYFRAME_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(.*)$")
LORA_TAG = re.compile(r"<lora:[^>]*>")
SEED_MAX = 2**64 - 1  # torch.Generator's range; the tool writes seeds from torch.seed() (up to 2^64 - 1)
S9_LENGTH = 16  # the tool's -L default
# controlnet_map's types -> the standard ControlNet 1.1 models the tool downloads for them
CONTROLNETS = {
    "controlnet_tile": "control_v11f1e_sd15_tile", "controlnet_ip2p": "control_v11e_sd15_ip2p",
    "controlnet_lineart": "control_v11p_sd15_lineart", "controlnet_lineart_anime": "control_v11p_sd15s2_lineart_anime",
    "controlnet_openpose": "control_v11p_sd15_openpose", "controlnet_softedge": "control_v11p_sd15_softedge",
    "controlnet_shuffle": "control_v11e_sd15_shuffle", "controlnet_depth": "control_v11f1p_sd15_depth",
    "controlnet_canny": "control_v11p_sd15_canny", "controlnet_inpaint": "control_v11p_sd15_inpaint",
    "controlnet_mlsd": "control_v11p_sd15_mlsd", "controlnet_normalbae": "control_v11p_sd15_normalbae",
    "controlnet_scribble": "control_v11p_sd15_scribble", "controlnet_seg": "control_v11p_sd15_seg",
    "qr_code_monster_v1": "control_v1p_sd15_qrcode_monster", "qr_code_monster_v2": "control_v1p_sd15_qrcode_monster",
    "controlnet_mediapipe_face": "control_v2p_sd15_mediapipe_face",
}
CONTROLNET_QUIET = {"input_image_dir", "max_samples_on_vram", "max_models_on_vram", "save_detectmap",
                    "preprocess_on_gpu", "is_loop", "controlnet_ref"}
# ip_adapter_map's switches -> the IP-Adapter SD1.5 file they pick (h94/IP-Adapter's names)
IP_ADAPTERS = (("is_full_face", "ip-adapter-full-face_sd15"), ("is_plus_face", "ip-adapter-plus-face_sd15"),
               ("is_light", "ip-adapter_sd15_light"), ("is_plus", "ip-adapter-plus_sd15"))
TI_LIKE = re.compile(r"(?i)^(easynegative|ng_deepnegative\w*|verybadimagenegative\w*|unrealisticdream|"
                     r"bad[-_]?(hands?|artist|prompt|dream|picture)\w*|[a-z]\w*-neg|[a-z]\w*_neg)$")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# keys that change nothing a render here could show (speed switches, other commands' settings)
S9_QUIET = {"name", "compile", "unet_batch_size", "result", "stylize_config", "upscale_config",
            "is_single_prompt_mode", "tensor_interpolation_slerp", "context_schedule"}


def supported(data: dict, source: str, notes: list[str]) -> dict:
    """`data` less the settings this lcmvideo does not have (motion LoRAs, IP-Adapter and init images
    come with their features), each named in a note."""
    top = {f.name for f in fields(Settings)}
    inner = {f.name for f in fields(ModelPaths)}
    out = {k: v for k, v in data.items() if k in top}
    for k in sorted(set(data) - top):
        notes.append(f"{source}: {k} not carried over (this lcmvideo has no {k.replace('_', ' ')})")
    if isinstance(data.get("models"), dict):
        out["models"] = {k: v for k, v in data["models"].items() if k in inner}
        for k in sorted(set(data["models"]) - inner):
            notes.append(f"{source}: models.{k} not carried over (this lcmvideo has no {k.replace('_', ' ')})")
    return out


def lcm_sampling(out: dict, uses_lcm: bool, what: str, notes: list[str]):
    """Steps and guidance set for another sampler (25 steps at CFG 7.5) would burn an LCM render:
    outside LCM's range (1-8 steps, guidance up to 2) they give way to lcmvideo's defaults, noted."""
    if uses_lcm:
        return
    dropped = [f"{k} {out[k]:g}" for k, hi in (("steps", 8), ("guidance", 2.0)) if k in out and out[k] > hi]
    for k, hi in (("steps", 8), ("guidance", 2.0)):
        if k in out and out[k] > hi:
            out.pop(k)
    if dropped:
        notes.append(f"{what}: {' and '.join(dropped)} suit its sampler, not LCM's few steps; lcmvideo's defaults "
                     "are used (give --steps/--guidance to keep them)")


def _frame_key(k, path: tuple, where) -> int:
    text = str(k).strip()
    if isinstance(k, bool) or not is_number(text) or float(text) < 0 or not float(text).is_integer():
        raise where(path, f"a frame number (0, 16, ...) is needed as the key, got {str(k)!r}")
    return int(float(text))


def _seed(v, path, where):
    """A seed as the tool writes it: any integer in torch's range; -1 (random) is None."""
    if v == -1 or v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= SEED_MAX:
        raise where(path, f"expected a seed from 0 to 2^64-1 or -1 (random), got {v!r}")
    return v


def _data_dir(where) -> Path | None:
    """The tool's data/ folder, where its configs' relative paths point, when it is found."""
    src = Path(where.source)
    for d in (src.parent.parent.parent / "data", src.parent.parent / "data", src.parent / "data"):
        if d.is_dir():
            return d.resolve()
    return None


def _text(v, path, where, what="text") -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise where(path, f"expected {what}, got {v!r}")
    return v


def _mapping(data, key, where) -> dict:
    v = data.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise where((key,), f"expected a mapping, got {v!r}")
    return v


def _numbered(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit())


def from_animatediff_json(data: dict, where) -> list[tuple[dict, list[str]]]:
    """animatediff-cli-prompt-travel's config (and the older AnimateDiff config it ships) -> clips."""
    src = where.source
    notes: list[str] = []
    data_dir = _data_dir(where)

    def path_of(p: str) -> str:
        if data_dir is not None and p and not Path(p).is_absolute() and (data_dir / p).exists():
            return str(data_dir / p)
        return p

    def line(ours: tuple, theirs: tuple):
        where.lines.setdefault(ours, where.lines.get(theirs))

    def num(key, lo, hi, kind=float):
        v = data.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise where((key,), f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise where((key,), f"must be from {lo} to {hi}, got {v}")
        return kind(v)

    common: dict = {}
    models: dict = {}
    for theirs, ours, lo, hi, kind in (("steps", "steps", 1, 100, int), ("guidance_scale", "guidance", 0, 30, float)):
        v = num(theirs, lo, hi, kind)
        if v is not None:
            common[ours] = v
            line((ours,), (theirs,))
    base = _text(data.get("base"), ("base",), where, "a checkpoint path")
    path = _text(data.get("path"), ("path",), where, "a checkpoint path")
    loras: list[dict] = []
    if base:  # the older format: `base` is the checkpoint, `path` a LoRA (or DreamBooth file) over it
        models["base"] = path_of(base)
        line(("models", "base"), ("base",))
        if path:
            alpha = num("lora_alpha", -5, 5)
            loras.append({"path": path_of(path), "weight": 0.8 if alpha is None else alpha})
    elif path:
        models["base"] = path_of(path)
        line(("models", "base"), ("path",))
    if data.get("motion_module"):
        models["motion"] = path_of(_text(data["motion_module"], ("motion_module",), where, "a path"))
    if data.get("vae_path"):
        models["vae"] = path_of(_text(data["vae_path"], ("vae_path",), where, "a path"))
        line(("models", "vae"), ("vae_path",))
    clip_skip = num("clip_skip", 1, 12, int)
    if clip_skip is not None:
        models["clip_skip"] = clip_skip  # the tool counts as A1111 does, as lcmvideo does
        line(("models", "clip_skip"), ("clip_skip",))
    scheduler = data.get("scheduler")
    lcm_map = _mapping(data, "lcm_map", where)
    if lcm_map.get("enable") is True:
        models["lcm_map"] = {k: v for k, v in lcm_map.items() if k != "enable"}
        for k in models["lcm_map"]:
            line(("models", "lcm_map", k), ("lcm_map", k))
        if data_dir is not None and (data_dir / "models/lcm_lora/sd15/pytorch_lora_weights.safetensors").is_file():
            models["lcm_lora"] = str(data_dir / "models/lcm_lora/sd15/pytorch_lora_weights.safetensors")
    elif lcm_map:
        notes.append(f"{src}: lcm_map is disabled there (enable: false); lcmvideo always samples with the "
                     "LCM-LoRA, at lcm_lora_scale")
    lcm_sampling(common, scheduler == "lcm" or lcm_map.get("enable") is True, src, notes)
    if scheduler not in (None, "", "lcm"):
        notes.append(f"{src}: scheduler {scheduler!r} not carried over: lcmvideo samples the LCM-LoRA "
                     "with lcm or tcd (models.sampler)")

    travel_loras: dict[str, dict[int, float]] = {}
    for i, (p, w) in enumerate(_mapping(data, "lora_map", where).items()):
        at = ("lora_map", p)
        if isinstance(w, dict):  # {"region": [...], "scale": {"0": 0.75, "40": 0}}: weight per frame
            scale = w.get("scale")
            if not isinstance(scale, dict) or not scale:
                raise where(at + ("scale",), "expected a mapping of frame: weight")
            keys = {_frame_key(k, at + ("scale", k), where): v for k, v in scale.items()}
            for k, v in keys.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not -5 <= v <= 5:
                    raise where(at + ("scale", str(k)), f"expected a weight from -5 to 5, got {v!r}")
            name = f"lora{i}_{Path(str(p)).stem}"
            loras.append({"path": path_of(str(p)), "weight": float(keys[min(keys)]), "name": name})
            if len(keys) > 1:
                travel_loras[name] = keys
            if w.get("region") not in (None, [], ["0", "background"], ["background", "0"]):
                notes.append(f"{src}: lora_map.{p}.region: LoRAs act on the whole frame here, not per region")
        elif isinstance(w, bool) or not isinstance(w, (int, float)) or not -5 <= w <= 5:
            raise where(at, f"expected a weight from -5 to 5 or a mapping with 'scale', got {w!r}")
        else:
            loras.append({"path": path_of(str(p)), "weight": float(w)})
    if loras:
        models["loras"] = loras
    motion_loras = []
    for p, w in _mapping(data, "motion_lora_map", where).items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not -5 <= w <= 5:
            raise where(("motion_lora_map", p), f"expected a weight from -5 to 5, got {w!r}")
        motion_loras.append({"path": path_of(str(p)), "weight": float(w)})
    if motion_loras:
        models["motion_loras"] = motion_loras

    controlnets = _controlnets(data, where, path_of, notes)
    if controlnets:
        common["controlnet"] = controlnets
    _ip_adapter(data, where, path_of, notes, common)
    _img2img(data, where, path_of, notes, common)

    o = _mapping(data, "output", where)
    if o.get("fps") is not None:
        if isinstance(o["fps"], bool) or not isinstance(o["fps"], (int, float)) or not 0.1 <= o["fps"] <= 240:
            raise where(("output", "fps"), f"expected frames per second from 0.1 to 240, got {o['fps']!r}")
        common["fps"] = o["fps"]
    fmt = o.get("format")
    if fmt in ("gif", "mp4"):
        common["format"] = fmt
    elif fmt not in (None, ""):
        notes.append(f"{src}: output.format {fmt!r} not carried over (lcmvideo writes mp4, gif or png)")
    if data.get("context_schedule") not in (None, "uniform"):
        notes.append(f"{src}: context_schedule {data['context_schedule']!r}: lcmvideo's windows are uniform")
    if _mapping(data, "gradual_latent_hires_fix_map", where).get("enable") is True:
        notes.append(f"{src}: gradual_latent_hires_fix_map not carried over")
    regions = [k for k, v in _mapping(data, "region_map", where).items()
               if isinstance(v, dict) and v.get("enable") is True]
    if regions:
        notes.append(f"{src}: region_map: regions {', '.join(map(str, regions))} not carried over "
                     "(lcmvideo prompts the whole frame)")
    if data.get("tensor_interpolation_slerp") is False:
        common["interpolation"] = "linear"

    known = {"base", "path", "motion_module", "vae_path", "clip_skip", "scheduler", "lcm_map", "lora_map",
             "lora_alpha", "motion_lora_map", "controlnet_map", "ip_adapter_map", "img2img_map", "output", "seed",
             "steps", "guidance_scale", "prompt", "prompts", "n_prompt", "prompt_map", "head_prompt", "tail_prompt",
             "prompt_fixed_ratio", "gradual_latent_hires_fix_map", "region_map"}
    for k in sorted(set(data) - known - S9_QUIET, key=str):
        if data[k] not in (None, {}, [], "", False):
            notes.append(f"{src}: {k} not carried over")
    if models:
        common["models"] = models

    seeds = data.get("seed")
    seeds = seeds if isinstance(seeds, list) else [] if seeds is None else [seeds]
    seeds = [_seed(v, ("seed", i), where) for i, v in enumerate(seeds)]
    negs = data.get("n_prompt")
    negs = negs if isinstance(negs, list) else [] if negs is None else [negs]
    negs = [_text(v, ("n_prompt", i), where) for i, v in enumerate(negs)]
    _embeddings(data, data_dir, notes, src, common, negs)

    if "prompt_map" in data:
        clips = [_prompt_map_clip(data, where, common, seeds, negs, travel_loras, notes)]
    else:
        key = "prompt" if "prompt" in data else "prompts"
        prompts = data.get(key)
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts:
            raise where((key,) if key in data else (), "expected a list of prompts (or prompt_map: frame: prompt)")
        if travel_loras:
            notes.append(f"{src}: lora_map scale keyframes need prompt_map; each LoRA keeps its first weight")
        clips = []
        for i, p in enumerate(prompts):  # one clip per prompt; negatives and seeds cycle as the tool does
            clip = {**common, "frames": S9_LENGTH, "keyframes": {"0": _text(p, (key, i), where, "a prompt")}}
            line(("keyframes", "0"), (key, i))
            if negs and negs[i % len(negs)]:
                clip["negative_prompt"] = negs[i % len(negs)]
            if seeds and seeds[i % len(seeds)] is not None:
                clip["seed"] = seeds[i % len(seeds)]
            clips.append((clip, list(notes)))
        return clips
    return clips


def _prompt_map_clip(data, where, common, seeds, negs, travel_loras, notes) -> tuple[dict, list[str]]:
    src = where.source
    pm = data["prompt_map"]
    if not isinstance(pm, dict) or not pm:
        raise where(("prompt_map",), "expected a mapping of frame: prompt")
    frames: dict[int, str] = {}
    for k, v in pm.items():
        f = _frame_key(k, ("prompt_map", k), where)
        frames[f] = _text(v, ("prompt_map", k), where, "a prompt")
        where.lines.setdefault(("keyframes", str(f)), where.lines.get(("prompt_map", k)))
    out: dict = {**common, "keyframes": {}}
    last = max(frames)
    out["frames"] = last + S9_LENGTH
    notes.append(f"{src}: frames: not in this format (animatediff-cli takes -L); using the last keyframe + "
                 f"{S9_LENGTH} = {last + S9_LENGTH}, set --frames to change it")
    if min(frames) != 0:
        notes.append(f"{src}: prompt_map has no frame 0; the first prompt starts the clip (the tool loops from "
                     "the last one)")
        frames[0] = frames.pop(min(frames))
    # the tool holds each prompt for prompt_fixed_ratio of the gap, blends by slerp, and blends the
    # last prompt back into the first (its context windows wrap round too)
    ratio = data.get("prompt_fixed_ratio", 0.5)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise where(("prompt_fixed_ratio",), f"expected a number from 0 to 1, got {ratio!r}")
    out["hold"] = min(max(float(ratio), 0.0), 0.99)
    out["loop"] = True
    out.setdefault("interpolation", "slerp")
    for f in sorted(frames):
        out["keyframes"][str(f)] = {"prompt": frames[f]}
    for name, keys in travel_loras.items():
        for f, w in keys.items():
            at = min(frames, key=lambda k: (abs(k - f), k))
            if at != f:
                notes.append(f"{src}: lora_map {name}: the weight at frame {f} is put on the keyframe at {at} "
                             "(lcmvideo travels LoRA weights between prompt keyframes)")
            out["keyframes"][str(at)].setdefault("lora_weights", {})[name] = float(w)
        notes.append(f"{src}: lora_map {name}: weights travel linearly between keyframes here (the tool eases "
                     "them quadratically)")
    for theirs, ours in (("head_prompt", "head"), ("tail_prompt", "tail")):
        if data.get(theirs) not in (None, ""):
            out[ours] = _text(data[theirs], (theirs,), where)
            where.lines.setdefault((ours,), where.lines.get((theirs,)))
    if len(seeds) > 1:
        rest = ", ".join(str(s) for s in seeds[1:4]) + (", ..." if len(seeds) > 4 else "")
        notes.append(f"{src}: seed: {len(seeds)} seeds given (the tool's --repeats); using the first, render the "
                     f"others with --seeds ({rest})")
    if seeds and seeds[0] is not None:
        out["seed"] = seeds[0]
    if len(negs) > 1:
        notes.append(f"{src}: n_prompt: {len(negs)} negative prompts given (the tool's --repeats); using the first")
    if negs and negs[0]:
        out["negative_prompt"] = negs[0]
    return out, notes


def _controlnets(data, where, path_of, notes) -> list[dict]:
    """controlnet_map: input_image_dir/<type>/0000.png ... per enabled type -> one ControlNet each."""
    src = where.source
    cm = _mapping(data, "controlnet_map", where)
    if not cm:
        return []
    folder = cm.get("input_image_dir")
    root = Path(path_of(folder)) if isinstance(folder, str) and folder else None
    if root is not None and not root.is_absolute():
        root = Path(where.source).parent / root
    out = []
    for name, item in cm.items():
        if name in CONTROLNET_QUIET or not isinstance(item, dict):
            if name == "controlnet_ref" and isinstance(item, dict) and item.get("enable") is True:
                notes.append(f"{src}: controlnet_map.controlnet_ref (reference-only) not carried over")
            continue
        if item.get("enable") is not True:
            continue
        images = _numbered(root / name) if root is not None else []
        if not images:
            continue  # the tool skips a type with no images too
        if name not in CONTROLNETS:
            notes.append(f"{src}: controlnet_map.{name}: no standard SD1.5 ControlNet known for it; not carried over")
            continue
        c = {"model": CONTROLNETS[name], "images": str(root / name)}
        for theirs, ours in (("controlnet_conditioning_scale", "scale"), ("control_guidance_start", "start"),
                             ("control_guidance_end", "end")):
            if isinstance(item.get(theirs), (int, float)) and not isinstance(item.get(theirs), bool):
                c[ours] = item[theirs]
        pre = item.get("preprocessor", {}).get("type") if isinstance(item.get("preprocessor"), dict) else None
        if item.get("use_preprocessor", True) and pre != "none" and name not in ("controlnet_tile", "controlnet_ip2p"):
            notes.append(f"{src}: controlnet_map.{name}: the tool runs its annotator on these images; lcmvideo "
                         "uses them as conditioning maps as they are (give maps, or pose_from/canny_from a video)")
        if isinstance(item.get("control_scale_list"), list) and item["control_scale_list"]:
            notes.append(f"{src}: controlnet_map.{name}.control_scale_list: an image conditions its own frame "
                         "only here, not its neighbours")
        out.append(c)
    if not out and root is not None:
        notes.append(f"{src}: controlnet_map: no enabled ControlNet type has images in {root}/<type>/")
    return out


def _ip_adapter(data, where, path_of, notes, common):
    src = where.source
    m = _mapping(data, "ip_adapter_map", where)
    if not m or m.get("enable") is not True:
        return
    folder = m.get("input_image_dir")
    if not isinstance(folder, str) or not folder:
        notes.append(f"{src}: ip_adapter_map has no input_image_dir; not carried over")
        return
    model = next((file for key, file in IP_ADAPTERS if m.get(key) is True), "ip-adapter_sd15")
    spec = {"model": model, "image": path_of(folder)}
    if isinstance(m.get("scale"), (int, float)) and not isinstance(m.get("scale"), bool):
        spec["scale"] = float(m["scale"])
    common["ip_adapter"] = spec
    if m.get("prompt_fixed_ratio", 0.5) != data.get("prompt_fixed_ratio", 0.5):
        notes.append(f"{src}: ip_adapter_map.prompt_fixed_ratio: images hold as the prompts do here (hold)")


def _img2img(data, where, path_of, notes, common):
    src = where.source
    m = _mapping(data, "img2img_map", where)
    if not m or m.get("enable") is not True:
        return
    folder = m.get("init_img_dir")
    root = Path(path_of(folder)) if isinstance(folder, str) and folder else None
    if root is not None and not root.is_absolute():
        root = Path(where.source).parent / root
    images = _numbered(root)
    if not images:
        notes.append(f"{src}: img2img_map: no numbered images in {root}; not carried over")
        return
    common["init_image"] = str(images[0])
    s = m.get("denoising_strength")
    if isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s <= 1:
        common["init_strength"] = round(1.0 - float(s), 6)  # its denoising strength is how far from the picture
    if len(images) > 1:
        notes.append(f"{src}: img2img_map: {len(images)} init images; lcmvideo starts every frame from the first "
                     f"({images[0].name})")


def _embeddings(data, data_dir, notes, src, common, negs):
    """The tool loads every file in data/embeddings and knows each by its stem: the ones named here."""
    texts = list(negs)
    for k in ("prompt", "prompts", "head_prompt", "tail_prompt"):
        v = data.get(k)
        texts += [str(x) for x in (v if isinstance(v, list) else [v]) if x]
    if isinstance(data.get("prompt_map"), dict):
        texts += [str(v) for v in data["prompt_map"].values()]
    folder = data_dir / "embeddings" if data_dir is not None else None
    if folder is None or not folder.is_dir():
        named = sorted({w for w in re.findall(r"[\w\-]+", " ".join(texts)) if TI_LIKE.search(w)})
        if named:
            notes.append(f"{src}: {', '.join(named[:4])}{', ...' if len(named) > 4 else ''} look like textual-"
                         "inversion names (the tool loads data/embeddings); here a word names an embedding found "
                         "with --embedding or in --models-dir")
        return
    words = set(re.findall(r"[\w\-.]+", " ".join(texts).lower()))
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".pt", ".safetensors", ".bin")
                   and p.stem.lower() in words)
    if found:
        common.setdefault("models", {})["embeddings"] = [str(p) for p in found]


def from_prompt_box(text: str, where) -> list[tuple[dict, list[str]]]:
    """Head lines, then `frame: prompt` lines, then tail lines (sd-webui-animatediff's prompt travel)."""
    head, tail, keyframes = [], [], {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = KEYFRAME_LINE.match(line)
        if m:
            if tail:
                raise usage(f"{where.source} (line {n}): a keyframe line after the tail lines; "
                            "keep head lines first, then 'N: prompt' lines, then tail lines")
            key = m.group(1)
            if key in keyframes:
                raise usage(f"{where.source} (line {n}): keyframe {key} given twice")
            keyframes[key] = m.group(2).strip()
            where.lines[("keyframes", key)] = n
        elif keyframes:
            tail.append(line)
        else:
            head.append(line)
    if not keyframes:
        raise usage(f"{where.source}: no 'N: prompt' lines found (a prompt-box file needs at least '0: prompt')")
    clean = [", ".join(c for c in (LORA_TAG.sub("", x).strip(" ,") for x in lines) if c) for lines in (head, tail)]
    if LORA_TAG.search(text):
        notes = "<lora:...> tags are not applied from a prompt box; give LoRAs with --lora or models.loras"
    else:
        notes = None
    out = {"keyframes": keyframes, "head": clean[0], "tail": clean[1]}
    last = max(int(float(k)) for k in keyframes)
    out["frames"] = max(16, last + 1)
    return [(out, [f"{where.source}: {notes}"] if notes else [])]
