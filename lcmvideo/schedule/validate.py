"""Checking what a schedule says: structure, types and ranges of every key, and flags applied
over it. Each error names the file, the key path and the line (parse.Where)."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import usage
from .parse import Index, Where, is_number
from .settings import (
    FITS,
    FREE_INIT_FILTERS,
    INPUT,
    INTERPOLATIONS,
    MODEL_KEYS,
    SAMPLERS,
    SOURCE_KEYS,
    TRAVEL,
    ControlSpec,
    FreeInit,
    IpAdapterSpec,
    LcmMap,
    LoraRef,
    ModelPaths,
    Settings,
)
from .timeline import finish


def _check_keys(d: dict, allowed, path: tuple, where: Where):
    for k in d:
        if k not in allowed:
            raise where(path + (k,), f"unknown key; expected one of: {', '.join(sorted(allowed))}")


def _num(v, path, where, kind=float, lo=None, hi=None, what="a number"):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and isinstance(v, float)
                                                                   and not v.is_integer()):
        raise where(path, f"expected {what}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise where(path, f"expected {what}, got {v!r}")
    v = kind(v)
    if lo is not None and v < lo:
        raise where(path, f"must be at least {lo}, got {v}")
    if hi is not None and v > hi:
        raise where(path, f"must be at most {hi}, got {v}")
    return v


def _str(v, path, where, optional=False):
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise where(path, f"expected text, got {v!r}")
    return v


def _bool(v, path, where):
    if not isinstance(v, bool):
        raise where(path, f"expected true or false, got {v!r}")
    return v


NUMBERS = {  # key: (type, low, high, what)
    "frames": (int, 1, 100_000, "a whole number of frames"),
    "fps": (float, 0.1, 240, "a number"),
    "steps": (int, 1, 100, "a whole number of steps"),
    "guidance": (float, 0.0, 30.0, "a number"),
    "controlnet_scale": (float, 0.0, 5.0, "a number"),
    "strength": (float, 0.0, 1.0, "a number"),
    "hold": (float, 0.0, 0.99, "a number"),
    "lcm_lora_scale": (float, 0.0, 5.0, "a number"),
    "shared_noise": (float, 0.0, 1.0, "a number from 0 to 1"),
    "ip_adapter_scale": (float, 0.0, 5.0, "a number"),
    "motion_scale": (float, 0.0, 5.0, "a number"),
    "init_strength": (float, 0.0, 1.0, "a number from 0 to 1"),
    "sparsectrl_scale": (float, 0.0, 5.0, "a number"),
}


def _models(d, path, where, base_dir: Path | None) -> ModelPaths:
    if not isinstance(d, dict):
        raise where(path, f"expected a mapping of model paths, got {d!r}")
    _check_keys(d, {f.name for f in fields(ModelPaths)}, path, where)
    m = ModelPaths()

    def rel(p):
        # paths in a schedule file are relative to the file, like any config
        if p is None or base_dir is None or p.lower() == "none":
            return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() or not (base_dir / q).exists() else (base_dir / q).resolve())

    for k in ("base", "motion", "lcm_lora", "models_dir", "vae", "sparsectrl"):
        if k in d:
            setattr(m, k, rel(_str(d[k], path + (k,), where, optional=True)))
    if d.get("embeddings") is not None:
        e = d["embeddings"]
        items = [e] if isinstance(e, str) else e
        if not isinstance(items, list):
            raise where(path + ("embeddings",), "expected a list of textual-inversion files (.pt, .safetensors)")
        m.embeddings = [rel(_str(x, path + ("embeddings", Index(i)), where)) for i, x in enumerate(items)]
    if "clip_skip" in d:
        m.clip_skip = _num(d["clip_skip"], path + ("clip_skip",), where, int, 1, 12, "a whole number of layers")
    if "sampler" in d:
        m.sampler = _str(d["sampler"], path + ("sampler",), where)
        if m.sampler not in SAMPLERS:
            raise where(path + ("sampler",), f"expected one of {', '.join(SAMPLERS)}, got {m.sampler!r}")
    if "gamma" in d:
        m.gamma = _num(d["gamma"], path + ("gamma",), where, lo=0.0, hi=1.0)
    if d.get("lcm_map") is not None:
        m.lcm_map = parse_lcm_map(d["lcm_map"], lambda sub, msg: where(path + ("lcm_map", *sub), msg))
    for k in ("device", "dtype"):
        if k in d:
            setattr(m, k, _str(d[k], path + (k,), where))
    if "lcm_lora_scale" in d:
        m.lcm_lora_scale = _num(d["lcm_lora_scale"], path + ("lcm_lora_scale",), where, lo=0.0, hi=5.0)
    if "fuse" in d:
        m.fuse = _bool(d["fuse"], path + ("fuse",), where)
    for key in ("loras", "motion_loras"):
        m_list = getattr(m, key)
        for ref in _lora_list(d.get(key, []), path + (key,), where):
            m_list.append(LoraRef(ref.path if ref.path.startswith("embedded:") else rel(ref.path), ref.weight,
                                  ref.name))
    return m


def _lora_list(items, path, where) -> list[LoraRef]:
    """A list of LoRAs: {path, weight, name} mappings or 'PATH[:WEIGHT]' strings."""
    if not isinstance(items, list):
        raise where(path, "expected a list of {path, weight, name} or 'PATH[:WEIGHT]' entries")
    out = []
    for i, item in enumerate(items):
        p = path + (Index(i),)
        if isinstance(item, str):
            ref = parse_lora(item, lambda msg, p=p: where(p, msg))
        elif isinstance(item, dict):
            _check_keys(item, {"path", "weight", "name"}, p, where)
            if "path" not in item:
                raise where(p, "missing key 'path'")
            ref = LoraRef(_str(item["path"], p + ("path",), where),
                          _num(item.get("weight", 1.0), p + ("weight",), where, lo=-5.0, hi=5.0),
                          _str(item.get("name"), p + ("name",), where, optional=True))
        else:
            raise where(p, f"expected a mapping or 'PATH[:WEIGHT]', got {item!r}")
        out.append(ref)
    return out


LCM_MAP_KEYS = ("start_scale", "end_scale", "gradient_start", "gradient_end")


def parse_lcm_map(d, error=None) -> LcmMap | None:
    """animatediff-cli-prompt-travel's `lcm_map` mapping -> LcmMap (None when `enable: false`).
    `error(subpath, message)` makes the exception."""
    error = error or (lambda sub, msg: usage(f"lcm_map{'.' + sub[0] if sub else ''}: {msg}"))
    if isinstance(d, LcmMap):
        return d
    if not isinstance(d, dict):
        raise error((), f"expected a mapping of {', '.join(LCM_MAP_KEYS)}, got {d!r}")
    for k in d:
        if k not in (*LCM_MAP_KEYS, "enable"):
            raise error((k,), f"unknown key; expected one of: {', '.join(sorted((*LCM_MAP_KEYS, 'enable')))}")
    if "enable" in d and not isinstance(d["enable"], bool):
        raise error(("enable",), f"expected true or false, got {d['enable']!r}")
    if d.get("enable") is False:
        return None

    def num(k, hi):
        v = d.get(k, getattr(LcmMap, k))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
            raise error((k,), f"expected a number from 0 to {hi:g}, got {v!r}")
        return float(v)

    m = LcmMap(num("start_scale", 5.0), num("end_scale", 5.0), num("gradient_start", 1.0), num("gradient_end", 1.0))
    if m.gradient_start > m.gradient_end:
        raise error(("gradient_end",), f"must be at least gradient_start ({m.gradient_start:g}), got {m.gradient_end:g}")
    return m


FREE_INIT_KEYS = ("iterations", "filter", "spatial_stop", "temporal_stop", "order")


def parse_free_init(v, error=None) -> FreeInit | None:
    """`free_init`: a number of iterations, true (the defaults), false/null (off) or a mapping of
    FREE_INIT_KEYS -> FreeInit (None when off). `error(subpath, message)` makes the exception."""
    error = error or (lambda sub, msg: usage(f"free_init{'.' + sub[0] if sub else ''}: {msg}"))
    if v is None or v is False or isinstance(v, FreeInit):
        return v or None
    if v is True:
        return FreeInit()
    if isinstance(v, int):
        v = {"iterations": v}
    if not isinstance(v, dict):
        raise error((), f"expected a number of iterations or a mapping of {', '.join(FREE_INIT_KEYS)}, got {v!r}")
    for k in v:
        if k not in FREE_INIT_KEYS:
            raise error((k,), f"unknown key; expected one of: {', '.join(sorted(FREE_INIT_KEYS))}")
    f = FreeInit()

    def num(k, kind, lo, hi, what):
        x = v[k]
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi or (
                kind is int and not float(x).is_integer()):
            raise error((k,), f"expected {what} from {lo} to {hi}, got {x!r}")
        return kind(x)

    if "iterations" in v:
        f.iterations = num("iterations", int, 1, 10, "a whole number of sampler runs")
    if "order" in v:
        f.order = num("order", int, 1, 16, "a whole number")
    for k in ("spatial_stop", "temporal_stop"):
        if k in v:
            setattr(f, k, num(k, float, 0.0, 1.0, "a number"))
    if "filter" in v:
        if v["filter"] not in FREE_INIT_FILTERS:
            raise error(("filter",), f"expected one of {', '.join(FREE_INIT_FILTERS)}, got {v['filter']!r}")
        f.filter = v["filter"]
    return f if f.iterations > 1 else None


def parse_lora(text: str, error=None, flag: str = "--lora") -> LoraRef:
    """'PATH[:WEIGHT]' -> LoraRef; a Windows drive letter's colon (or embedded:NAME's) is not a weight."""
    error = error or (lambda msg: usage(f"{flag}: {msg}"))
    path, sep, weight = text.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()) and path.lower() != "embedded":
        try:
            return LoraRef(path, float(weight))
        except ValueError:
            if "/" not in weight and "\\" not in weight:
                raise error(f"'{text}': the weight after ':' must be a number") from None
    return LoraRef(text, 1.0)


def _control(d, path, where, base_dir: Path | None) -> ControlSpec:
    if not isinstance(d, dict):
        raise where(path, f"expected a mapping with a model and a source, got {d!r}")
    _check_keys(d, {f.name for f in fields(ControlSpec)}, path, where)
    c = ControlSpec()
    given = [k for k in SOURCE_KEYS if d.get(k) is not None]
    if len(given) != 1:
        raise where(path, f"needs exactly one source of {', '.join(SOURCE_KEYS)}; got "
                          f"{', '.join(given) if given else 'none'}")
    for k in ("model", *SOURCE_KEYS):
        v = _str(d.get(k), path + (k,), where, optional=True)
        if v is not None and v != INPUT and base_dir is not None:  # relative to the file, as models are
            q = Path(v).expanduser()
            if not q.is_absolute() and (k != "model" or (base_dir / q).exists()):
                v = str((base_dir / q).resolve())
        setattr(c, k, v)
    for k, lo, hi in (("scale", 0.0, 5.0), ("start", 0.0, 1.0), ("end", 0.0, 1.0)):
        if k in d:
            setattr(c, k, _num(d[k], path + (k,), where, lo=lo, hi=hi))
    if c.start >= c.end:
        raise where(path + ("end",), f"must be greater than start ({c.start}), got {c.end}")
    for k, options in (("missing", ("none", "nearest")), ("fit", FITS), ("count", ("error", "stretch"))):
        if k in d:
            v = _str(d[k], path + (k,), where)
            if v not in options:
                raise where(path + (k,), f"expected one of {', '.join(options)}, got {v!r}")
            setattr(c, k, v)
    if d.get("size") is not None:
        v = d["size"]
        if isinstance(v, str) and v.strip():  # WxH, or the image/video the poses came from
            q = Path(v).expanduser()
            if base_dir is not None and not q.is_absolute() and (base_dir / q).exists():
                v = str((base_dir / q).resolve())
        elif not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              and x > 0 for x in v)):
            raise where(path + ("size",), f"expected [width, height] in pixels, WIDTHxHEIGHT or the image/video "
                                          f"the poses came from, got {v!r}")
        c.size = v
    return c


def _ip_adapter(d, path, where, base_dir: Path | None) -> IpAdapterSpec:
    if not isinstance(d, dict):
        raise where(path, f"expected a mapping with model and image, got {d!r}")
    _check_keys(d, {f.name for f in fields(IpAdapterSpec)}, path, where)
    for k in ("model", "image"):
        if d.get(k) is None:
            raise where(path, f"missing key {k!r}")
    values = {}
    for k in ("model", "image", "encoder"):
        v = _str(d.get(k), path + (k,), where, optional=True)
        if v is not None and base_dir is not None:  # relative to the file, as models are
            q = Path(v).expanduser()
            if not q.is_absolute() and (k == "image" or (base_dir / q).exists()):
                v = str((base_dir / q).resolve())
        values[k] = v
    scale = _num(d.get("scale", 1.0), path + ("scale",), where, *NUMBERS["ip_adapter_scale"][:3])
    return IpAdapterSpec(values["model"], values["image"], scale, values["encoder"])


def parse_ip_image(text: str, error=None) -> tuple[str, float | None]:
    """'IMAGE[:SCALE]' -> (image, scale or None); a Windows drive letter's colon is not a scale."""
    error = error or (lambda msg: usage(f"--ip-image: {msg}"))
    path, sep, scale = text.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()):
        try:
            v = float(scale)
        except ValueError:
            if "/" not in scale and "\\" not in scale:
                raise error(f"'{text}': the scale after ':' must be a number") from None
            return text, None
        if not (math.isfinite(v) and 0 <= v <= 5):
            raise error(f"'{text}': the scale must be from 0 to 5, got {v:g}")
        return path, v
    return text, None


def _keyframe_value(v, path, where) -> dict:
    """A keyframe's value: a prompt, or a mapping with a prompt and travelled parameters."""
    if isinstance(v, str):
        return {"prompt": v}
    if not isinstance(v, dict):
        raise where(path, f"expected a prompt or a mapping with 'prompt', got {v!r}")
    allowed = {"prompt", "negative_prompt", "hold", "lora_weights", *TRAVEL}
    _check_keys(v, allowed, path, where)
    if "prompt" not in v:
        raise where(path, "missing key 'prompt'")
    out = {"prompt": _str(v["prompt"], path + ("prompt",), where)}
    if "negative_prompt" in v:
        out["negative_prompt"] = _str(v["negative_prompt"], path + ("negative_prompt",), where)
    for k in ("hold", *TRAVEL):
        if k in v:
            kind, lo, hi, what = NUMBERS[k]
            out[k] = _num(v[k], path + (k,), where, kind, lo, hi, what)
    if "lora_weights" in v:
        lw = v["lora_weights"]
        if not isinstance(lw, dict):
            raise where(path + ("lora_weights",), "expected a mapping of LoRA name: weight")
        out["lora_weights"] = {str(n): _num(w, path + ("lora_weights", n), where, lo=-5.0, hi=5.0)
                               for n, w in lw.items()}
    return out


def from_dict(d: Any, where: Where, base_dir: Path | None = None) -> Settings:
    """Validate the structure and types of a parsed file; frame-dependent rules wait for finish()."""
    if not isinstance(d, dict):
        raise where((), "expected a mapping of settings at the top level")
    allowed = {f.name for f in fields(Settings)} - {"resolved", "warnings"}
    _check_keys(d, allowed, (), where)
    s = Settings()
    for k in ("prompt", "head", "tail", "negative_prompt"):
        if k in d:
            setattr(s, k, _str(d[k], (k,), where, optional=True) or "")
    if "keyframes" in d:
        kf = d["keyframes"]
        if not isinstance(kf, dict) or not kf:
            raise where(("keyframes",), "expected a mapping of frame: prompt")
        for k, v in kf.items():
            if isinstance(k, bool) or not (isinstance(k, (int, float)) or is_number(str(k))):
                raise where(("keyframes", k), "a keyframe's key must be a frame number, a negative index "
                                              "from the end (-1 = last) or a fraction of the clip (0.5)")
            s.keyframes[str(k)] = _keyframe_value(v, ("keyframes", k), where)
            where.lines.setdefault(("keyframes", str(k)), where.lines.get(("keyframes", k)))
    if "interpolation" in d:
        s.interpolation = _str(d["interpolation"], ("interpolation",), where)
        if s.interpolation not in INTERPOLATIONS:
            raise where(("interpolation",), f"expected one of {', '.join(INTERPOLATIONS)}, got {s.interpolation!r}")
    if "loop" in d:
        s.loop = _bool(d["loop"], ("loop",), where)
    if "context" in d:
        c = d["context"]
        if not isinstance(c, dict):
            raise where(("context",), "expected a mapping with length and overlap")
        _check_keys(c, {"length", "overlap"}, ("context",), where)
        if "length" in c:
            s.context.length = _num(c["length"], ("context", "length"), where, int, 2, 64, "a whole number of frames")
        if "overlap" in c:
            s.context.overlap = _num(c["overlap"], ("context", "overlap"), where, int, 0, 63,
                                     "a whole number of frames")
    if d.get("init_image") is not None:  # relative to the schedule file, as every path in it
        s.init_image = _str(d["init_image"], ("init_image",), where)
        q = Path(s.init_image).expanduser()
        if base_dir is not None and not q.is_absolute():
            s.init_image = str((base_dir / q).resolve())
    if "init_fit" in d:
        s.init_fit = _str(d["init_fit"], ("init_fit",), where)
        if s.init_fit not in FITS:
            raise where(("init_fit",), f"expected one of {', '.join(FITS)}, got {s.init_fit!r}")
    if "free_init" in d:
        s.free_init = parse_free_init(d["free_init"], lambda sub, msg: where(("free_init", *sub), msg))
    for k, (kind, lo, hi, what) in NUMBERS.items():
        if k in d and k not in ("lcm_lora_scale", "shared_noise") and not (k == "init_strength" and d[k] is None):
            setattr(s, k, _num(d[k], (k,), where, kind, lo, hi, what))
    for k in ("width", "height"):
        if d.get(k) is not None:
            setattr(s, k, _num(d[k], (k,), where, int, lo=8, hi=4096, what="a whole number of pixels"))
    if d.get("shared_noise") is not None:  # null, as a sidecar may say: the model's default
        s.shared_noise = _num(d["shared_noise"], ("shared_noise",), where, *NUMBERS["shared_noise"])
    if d.get("seed") is not None:
        s.seed = _num(d["seed"], ("seed",), where, int, lo=0, hi=2**64 - 1, what="a whole number")  # torch's range
    if "models" in d:
        s.models = _models(d["models"], ("models",), where, base_dir)
    if "controlnet" in d:
        c = d["controlnet"]
        items = [c] if isinstance(c, dict) else c
        if not isinstance(items, list):
            raise where(("controlnet",), "expected a mapping or a list of mappings")
        for i, item in enumerate(items):
            s.controlnet.append(_control(item, ("controlnet", Index(i)) if isinstance(c, list) else ("controlnet",),
                                         where, base_dir))
    if d.get("ip_adapter") is not None:
        s.ip_adapter = _ip_adapter(d["ip_adapter"], ("ip_adapter",), where, base_dir)
    if "output" in d:
        s.output = _str(d["output"], ("output",), where, optional=True)
        if s.output and base_dir is not None and not Path(s.output).expanduser().is_absolute():
            s.output = str(base_dir / s.output)
    if "format" in d:
        s.format = _str(d["format"], ("format",), where, optional=True)
    s.where = where
    return finish(s, where)


def _ip_flags(s: Settings, model: str | None, image, encoder: str | None):
    """--ip-adapter PATH, --ip-image IMAGE[:SCALE] (text, or (image, scale) as parse_ip_image gives)
    and --ip-encoder over the schedule's ip_adapter (on `s`, a copy)."""
    if isinstance(image, str):
        image = parse_ip_image(image)
    if model is None and image is None and encoder is None:
        return
    if s.ip_adapter is None:
        if model is None:
            flag = "--ip-image" if image is not None else "--ip-encoder"
            raise usage(f"{flag}: needs --ip-adapter PATH (or ip_adapter in the schedule)")
        if image is None:
            raise usage("--ip-adapter: needs --ip-image IMAGE[:SCALE] (or ip_adapter.image in the schedule)")
        s.ip_adapter = IpAdapterSpec(model, image[0])
    if model is not None:
        s.ip_adapter.model = model
    if image is not None:
        s.ip_adapter.image = image[0]
        if image[1] is not None:
            s.ip_adapter.scale = image[1]
    if encoder is not None:
        s.ip_adapter.encoder = encoder


def apply_overrides(s: Settings, **flags) -> Settings:
    """A copy of `s` with CLI flags over the file's values; None means 'not given'."""
    for k in ("width", "height"):
        if flags.get(k) is not None and flags[k] % 8:
            raise usage(f"--{k}: must be a multiple of 8 (the VAE's scale factor), got {flags[k]}")
    if flags.get("sampler") is not None and flags["sampler"] not in SAMPLERS:
        raise usage(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {flags['sampler']!r}")
    if flags.get("gamma") is not None and not 0 <= flags["gamma"] <= 1:
        raise usage(f"--gamma: expected a number from 0 to 1, got {flags['gamma']}")
    if flags.get("seed") is not None and not 0 <= flags["seed"] <= 2**64 - 1:
        raise usage(f"--seed: expected a whole number from 0 to 2^64-1, got {flags['seed']}")
    if flags.get("init_strength") is not None and not 0 <= flags["init_strength"] <= 1:
        raise usage(f"--init-strength: expected a number from 0 to 1, got {flags['init_strength']}")
    if flags.get("sparsectrl_scale") is not None and not (
            isinstance(flags["sparsectrl_scale"], (int, float)) and 0 <= flags["sparsectrl_scale"] <= 5):
        raise usage(f"--sparsectrl-scale: expected a number from 0 to 5, got {flags['sparsectrl_scale']!r}")
    if flags.get("init_fit") is not None and flags["init_fit"] not in FITS:
        raise usage(f"--init-fit: expected one of {', '.join(FITS)}, got {flags['init_fit']!r}")
    if flags.get("clip_skip") is not None and not (isinstance(flags["clip_skip"], int) and 1 <= flags["clip_skip"] <= 12):
        raise usage(f"--clip-skip: expected a whole number from 1 to 12, got {flags['clip_skip']!r}")
    s = s.copy()
    s.where = s.where or Where("command line")
    _ip_flags(s, flags.pop("ip_adapter", None), flags.pop("ip_image", None), flags.pop("ip_encoder", None))
    prompt = flags.pop("prompt", None)
    if prompt is not None:
        s.keyframes = {"0": {"prompt": prompt}}
        s.prompt = ""
    for k, v in flags.items():
        if v is None or v == ():
            continue
        if k == "lcm_map":
            s.models.lcm_map = parse_lcm_map(v)
        elif k in MODEL_KEYS:
            if k in ("loras", "motion_loras"):  # the Python API may pass 'PATH[:WEIGHT]' strings
                v = [parse_lora(x, flag="--" + k[:-1].replace("_", "-")) if isinstance(x, str) else x for x in v]
            setattr(s.models, k, list(v) if k in ("loras", "motion_loras", "embeddings") else v)
        elif k in ("context_length", "context_overlap"):
            setattr(s.context, k.split("_")[1], v)
        elif k == "controlnet":
            s.controlnet = list(v)
        elif k in ("free_init", "free_init_filter"):
            continue
        else:
            setattr(s, k, v)
    if flags.get("free_init") is not None or flags.get("free_init_filter") is not None:
        s.free_init = free_init_flags(s.free_init, flags.get("free_init"), flags.get("free_init_filter"))
    return finish(s)


def free_init_flags(current: FreeInit | None, iterations, filter_name) -> FreeInit | None:
    """--free-init N and --free-init-filter over the file's free_init (the filter alone turns it on);
    the API may give a FreeInit or a mapping as the schedule says it instead of N."""
    if isinstance(iterations, (FreeInit, dict)):
        current, iterations = parse_free_init(iterations), None
        if current is None:
            return None
    if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                   or not 1 <= iterations <= 10):
        raise usage(f"--free-init: expected a whole number of sampler runs from 1 to 10, got {iterations!r}")
    if filter_name is not None and filter_name not in FREE_INIT_FILTERS:
        raise usage(f"--free-init-filter: expected one of {', '.join(FREE_INIT_FILTERS)}, got {filter_name!r}")
    f = FreeInit(**vars(current)) if current else FreeInit()
    if iterations is not None:
        f.iterations = iterations
    if filter_name is not None:
        f.filter = filter_name
    return f if f.iterations > 1 else None


