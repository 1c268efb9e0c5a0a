"""Schedule files: keyframed prompts and travelled parameters, validated, resolved per frame.

Pure Python (PyYAML, no torch) so `lcmvideo plan` is instant. JSON files are read by the
same YAML loader (JSON is YAML). Every error names the file, the key path and the line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .control import FITS, INPUT, SOURCE_KEYS, ControlSpec
from .errors import usage

TRAVEL = ("guidance", "lcm_lora_scale", "controlnet_scale", "strength")  # per-keyframe numeric parameters
INTERPOLATIONS = ("linear", "slerp")


@dataclass
class LoraRef:
    path: str
    weight: float = 1.0  # multiplier on the LoRA's own alpha/rank scale
    name: str | None = None  # how keyframes' lora_weights refer to it; default: the file's stem

    @property
    def key(self) -> str:
        return self.name or Path(self.path.rstrip("/\\")).name.split(".")[0]


@dataclass
class ModelPaths:
    base: str | None = None  # SD1.5: diffusers folder, HF cache id, single .safetensors/.ckpt, or a name in models_dir
    motion: str | None = None  # AnimateDiff motion module: diffusers folder or original single file
    lcm_lora: str | None = None  # LCM-LoRA file/folder; "none" for an LCM-distilled base
    lcm_lora_scale: float = 1.0  # strength of the LCM-LoRA (travels per keyframe too)
    loras: list[LoraRef] = field(default_factory=list)  # extra style LoRAs
    models_dir: str | None = None  # an A1111/ComfyUI folder to find models in by name
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16
    fuse: bool = True  # fuse LoRAs into the weights (faster); false keeps them as adapters


MODEL_KEYS = frozenset(f.name for f in fields(ModelPaths))  # settings that choose and load models


@dataclass
class Context:
    length: int = 16  # frames the motion module sees at once (AnimateDiff was trained on 16)
    overlap: int = 4  # frames shared by neighbouring windows


@dataclass
class Keyframe:
    frame: int  # resolved frame index
    key: str  # the key as written: "8", "-1", "0.5"
    prompt: str
    negative_prompt: str | None = None  # None: the global negative prompt
    hold: float | None = None  # fraction of the gap to the next keyframe held before blending; None: global
    params: dict[str, float] = field(default_factory=dict)  # travelled values set here; LoRAs as "lora:NAME"


@dataclass
class Settings:
    prompt: str = ""  # shorthand for keyframes: {0: prompt}
    keyframes: dict[str, Any] = field(default_factory=dict)  # key as written -> prompt or {prompt, ...}
    head: str = ""  # text put before every keyframe's prompt
    tail: str = ""  # text put after every keyframe's prompt
    negative_prompt: str = ""  # used only when guidance > 1
    interpolation: str = "linear"  # linear | slerp: how text embeddings blend between keyframes
    hold: float = 0.0  # default hold (0-1): fraction of each gap a keyframe stays unblended
    loop: bool = False  # blend the end back into the first keyframe (for seamless loops)
    context: Context = field(default_factory=Context)
    frames: int = 16  # clip length in frames
    width: int | None = None  # pixels, multiple of 8; None = the model's native size
    height: int | None = None
    fps: float = 8.0  # frames per second of the output
    steps: int = 4  # LCM denoising steps; 2-8 is LCM's range
    guidance: float = 1.0  # classifier-free guidance; <= 1 turns CFG off (half the UNet work)
    controlnet_scale: float = 1.0  # ControlNet conditioning scale (travels per keyframe)
    strength: float = 0.5  # img2img strength for restyling (travels per keyframe)
    seed: int | None = None  # None = a random seed, printed and recorded
    shared_noise: float | None = None  # 0-1: share of the frames' noise they have in common; None = the model's
    models: ModelPaths = field(default_factory=ModelPaths)
    controlnet: list[ControlSpec] = field(default_factory=list)  # ControlNets with their conditioning
    output: str | None = None  # .mp4, .gif or a folder for PNG frames
    format: str | None = None  # mp4 | gif | png; None = from the output's extension
    resolved: list[Keyframe] = field(default_factory=list, repr=False)  # keyframes by frame, after finish()
    warnings: list[str] = field(default_factory=list, repr=False)  # lint, after finish()

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("resolved", "warnings", "prompt"):
            d.pop(k)
        return d


class Index(int):
    """A list position in a key path, shown as [i]."""


class _Where:
    """Maps key paths to source lines, so errors can say where."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[tuple, int] = {}

    def at(self, path: tuple) -> str:
        keys = "".join(f"[{p}]" if isinstance(p, Index) else "." + _quote(p) for p in path).lstrip(".")
        line = self.lines.get(path)
        return keys + (f" (line {line})" if line else "")

    def __call__(self, path: tuple, message: str) -> Exception:
        at = self.at(path)
        return usage(f"{self.source}: {at}: {message}" if at else f"{self.source}: {message}")


def _quote(key) -> str:
    text = str(key)
    return f'"{text}"' if isinstance(key, (int, float)) or _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _compose(text: str, where: _Where) -> Any:
    """YAML -> Python, recording the line of every mapping key and list item."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise usage(f"{where.source}{at}: not valid YAML/JSON: {problem}") from None
    if node is None:
        return {}
    loader = yaml.SafeLoader("")

    def scalar(n):
        try:
            return loader.construct_object(n, deep=True)
        except yaml.YAMLError as e:
            raise usage(f"{where.source} (line {n.start_mark.line + 1}): {e}") from None

    def build(n, path):
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = scalar(k)
                if isinstance(key, (list, dict)) or key is None:
                    raise usage(f"{where.source} (line {k.start_mark.line + 1}): a key must be a name or a number")
                where.lines[path + (key,)] = k.start_mark.line + 1
                if key in out:
                    raise where(path + (key,), "duplicate key")
                out[key] = build(v, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            out = []
            for i, v in enumerate(n.value):
                where.lines[path + (Index(i),)] = v.start_mark.line + 1
                out.append(build(v, path + (Index(i),)))
            return out
        return scalar(n)

    try:
        return build(node, ())
    finally:
        loader.dispose()


def _check_keys(d: dict, allowed, path: tuple, where: _Where):
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

    for k in ("base", "motion", "lcm_lora", "models_dir"):
        if k in d:
            setattr(m, k, rel(_str(d[k], path + (k,), where, optional=True)))
    for k in ("device", "dtype"):
        if k in d:
            setattr(m, k, _str(d[k], path + (k,), where))
    if "lcm_lora_scale" in d:
        m.lcm_lora_scale = _num(d["lcm_lora_scale"], path + ("lcm_lora_scale",), where, lo=0.0, hi=5.0)
    if "fuse" in d:
        m.fuse = _bool(d["fuse"], path + ("fuse",), where)
    loras = d.get("loras", [])
    if not isinstance(loras, list):
        raise where(path + ("loras",), "expected a list of {path, weight, name} or 'PATH[:WEIGHT]' entries")
    for i, item in enumerate(loras):
        p = path + ("loras", Index(i))
        if isinstance(item, str):
            ref = parse_lora(item, lambda msg: where(p, msg))
        elif isinstance(item, dict):
            _check_keys(item, {"path", "weight", "name"}, p, where)
            if "path" not in item:
                raise where(p, "missing key 'path'")
            ref = LoraRef(_str(item["path"], p + ("path",), where),
                          _num(item.get("weight", 1.0), p + ("weight",), where, lo=-5.0, hi=5.0),
                          _str(item.get("name"), p + ("name",), where, optional=True))
        else:
            raise where(p, f"expected a mapping or 'PATH[:WEIGHT]', got {item!r}")
        m.loras.append(LoraRef(rel(ref.path), ref.weight, ref.name))
    return m


def parse_lora(text: str, error=None) -> LoraRef:
    """'PATH[:WEIGHT]' -> LoraRef; a Windows drive letter's colon is not a weight."""
    error = error or (lambda msg: usage(f"--lora: {msg}"))
    path, sep, weight = text.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()):
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
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)):
            raise where(path + ("size",), f"expected [width, height] in pixels, got {v!r}")
        c.size = v
    return c


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


def from_dict(d: Any, where: _Where, base_dir: Path | None = None) -> Settings:
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
            if isinstance(k, bool) or not (isinstance(k, (int, float)) or _is_number(str(k))):
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
    for k, (kind, lo, hi, what) in NUMBERS.items():
        if k in d and k not in ("lcm_lora_scale", "shared_noise"):
            setattr(s, k, _num(d[k], (k,), where, kind, lo, hi, what))
    for k in ("width", "height"):
        if d.get(k) is not None:
            setattr(s, k, _num(d[k], (k,), where, int, lo=8, hi=4096, what="a whole number of pixels"))
    if d.get("shared_noise") is not None:  # null, as a sidecar may say: the model's default
        s.shared_noise = _num(d["shared_noise"], ("shared_noise",), where, *NUMBERS["shared_noise"])
    if d.get("seed") is not None:
        s.seed = _num(d["seed"], ("seed",), where, int, lo=0, hi=2**63 - 1, what="a whole number")
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
    if "output" in d:
        s.output = _str(d["output"], ("output",), where, optional=True)
        if s.output and base_dir is not None and not Path(s.output).expanduser().is_absolute():
            s.output = str(base_dir / s.output)
    if "format" in d:
        s.format = _str(d["format"], ("format",), where, optional=True)
    s._where = where
    return finish(s, where)


def resolve_frame(key: str, frames: int) -> int | None:
    """'8' -> 8, '-1' -> frames-1, '0.5' -> the frame halfway (round half up of 0.5 * (frames-1))."""
    if "." in key or "e" in key.lower():
        f = float(key)
        if not 0.0 <= f <= 1.0:
            return None
        return math.floor(f * (frames - 1) + 0.5)
    i = int(key)
    return frames + i if i < 0 else i


def finish(s: Settings, where: _Where | None = None) -> Settings:
    """Frame-dependent rules and keyframe resolution; run again after CLI overrides."""
    where = where or getattr(s, "_where", None) or _Where("<settings>")
    if s.keyframes and s.prompt:
        raise where(("prompt",), "give either 'prompt' or 'keyframes', not both")
    if s.prompt:
        s.keyframes = {"0": {"prompt": s.prompt}}
        s.prompt = ""
    for k in ("width", "height"):
        v = getattr(s, k)
        if v is not None and v % 8:
            raise where((k,), f"must be a multiple of 8 (the VAE's scale factor), got {v}")
    if s.context.overlap >= s.context.length:
        raise where(("context", "overlap"), f"must be less than context.length ({s.context.length}), "
                                            f"got {s.context.overlap}")
    s.warnings = []
    by_frame: dict[int, Keyframe] = {}
    s.keyframes = {str(k): v for k, v in s.keyframes.items()}
    for key, v in s.keyframes.items():
        v = v if isinstance(v, dict) else {"prompt": v}
        frame = resolve_frame(key, s.frames)
        if frame is None or not 0 <= frame < s.frames:
            what = "fraction" if "." in key else "frame"
            raise where(("keyframes", key), f"{what} {key} is beyond the clip (frames: {s.frames})")
        params = {k: v[k] for k in TRAVEL if k in v}
        params.update({f"lora:{n}": w for n, w in v.get("lora_weights", {}).items()})
        kf = Keyframe(frame, key, v["prompt"], v.get("negative_prompt"), v.get("hold"), params)
        if frame in by_frame:
            s.warnings.append(f"{where.at(('keyframes', by_frame[frame].key))} and {where.at(('keyframes', key))} "
                              f"both resolve to frame {frame}; the later one is used")
        by_frame[frame] = kf
    s.resolved = [by_frame[f] for f in sorted(by_frame)]
    if s.resolved and s.resolved[0].frame != 0:
        raise where(("keyframes",), f"frame 0 needs a prompt (the first keyframe is at frame {s.resolved[0].frame})")
    names = {r.key for r in s.models.loras}
    for kf in s.resolved:
        for p in kf.params:
            if p.startswith("lora:") and p[5:] not in names:
                known = ", ".join(sorted(names)) or "none are loaded"
                raise where(("keyframes", kf.key, "lora_weights", p[5:]),
                            f"no LoRA named {p[5:]!r} in models.loras ({known})")
    _lint(s, where)
    return s


def _lint(s: Settings, where: _Where):
    """Warnings: settings that are legal but probably not what the user wants."""
    gap = max(2, s.context.length // 4)
    for a, b in zip(s.resolved, s.resolved[1:]):
        if b.frame - a.frame < gap:
            s.warnings.append(f"keyframes at frames {a.frame} and {b.frame} are {b.frame - a.frame} frame(s) apart: "
                              f"closer than {gap}, the motion module blends them into one")
    for path, g in [(("guidance",), s.guidance)] + [(("keyframes", k.key, "guidance"), k.params["guidance"])
                                                    for k in s.resolved if "guidance" in k.params]:
        if not 1.0 <= g <= 2.0:
            s.warnings.append(f"{where.at(path)}: guidance {g:g} is outside LCM's useful range 1-2")
    if not 1 <= s.steps <= 8:
        s.warnings.append(f"{where.at(('steps',))}: {s.steps} steps is outside LCM's useful range 1-8")


# ---------------------------------------------------------------- the per-frame plan


@dataclass
class FrameRow:
    frame: int
    blend: list[tuple[int, float]]  # (index into Settings.resolved, weight), weights sum to 1
    params: dict[str, float]  # every travelled parameter's value at this frame


def _segment(frame: int, points: list[tuple[int, float | None]], frames: int, loop: bool, hold: float):
    """Which two points a frame lies between and the blend weight of the second, after holding."""
    for i, (f0, h) in enumerate(points):
        last = i + 1 == len(points)
        if last and not loop:
            return i, i, 0.0
        f1 = frames if last else points[i + 1][0]
        if f0 <= frame < f1 or last:
            t = (frame - f0) / (f1 - f0)
            h = hold if h is None else h
            t = 0.0 if t <= h else (t - h) / (1 - h)
            return i, (0 if last else i + 1), t
    return 0, 0, 0.0


def require_prompt(s: Settings):
    if not s.resolved:
        where = getattr(s, "_where", None) or _Where("command line")
        raise where(("keyframes",), "no prompt: give 'prompt' or 'keyframes' (or --prompt)")


def plan(s: Settings) -> list[FrameRow]:
    """The resolved per-frame table: which keyframes blend with what weights, and every parameter."""
    require_prompt(s)
    kfs = s.resolved
    points = [(k.frame, k.hold) for k in kfs]
    defaults = {"guidance": s.guidance, "lcm_lora_scale": s.models.lcm_lora_scale,
                "controlnet_scale": s.controlnet_scale, "strength": s.strength}
    defaults.update({f"lora:{r.key}": r.weight for r in s.models.loras})
    # each parameter travels between the keyframes that set it, from its global value at frame 0
    curves = {}
    for p, default in defaults.items():
        pts = [(0, kfs[0].params.get(p, default), kfs[0].hold)] + [
            (k.frame, k.params[p], k.hold) for k in kfs[1:] if p in k.params]
        curves[p] = pts
    rows = []
    for f in range(s.frames):
        i, j, t = _segment(f, points, s.frames, s.loop, s.hold)
        blend = [(i, 1.0)] if t == 0.0 or i == j else [(i, 1.0 - t), (j, t)]
        params = {}
        for p, pts in curves.items():
            a, b, u = _segment(f, [(x[0], x[2]) for x in pts], s.frames, s.loop, s.hold)
            params[p] = pts[a][1] * (1 - u) + pts[b][1] * u
        rows.append(FrameRow(f, blend, params))
    return rows


def travels_lora(s: Settings) -> bool:
    """Whether any keyframe changes a LoRA's weight (then LoRAs cannot be fused)."""
    return any(p == "lcm_lora_scale" or p.startswith("lora:") for k in s.resolved for p in k.params)


def full_prompt(s: Settings, kf: Keyframe) -> str:
    return ", ".join(p.strip() for p in (s.head, kf.prompt, s.tail) if p and p.strip())


def negative_for(s: Settings, kf: Keyframe) -> str:
    return s.negative_prompt if kf.negative_prompt is None else kf.negative_prompt


# ---------------------------------------------------------------- reading files


SIDECAR_MARK = "lcmvideo"


def load(path: Path) -> Settings:
    """Read a schedule file, an earlier render's sidecar JSON, or an imported format."""
    from . import importers

    path = Path(path)
    where = _Where(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise usage(f"{path}: no such schedule file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise usage(f"{path}: cannot read the schedule file: {e}") from None
    if path.suffix.lower() == ".txt":
        data, notes = importers.from_prompt_box(text, where)
        s = from_dict(data, where, path.parent)
        s.warnings[:0] = notes
        return s
    data = _compose(text, where)
    if isinstance(data, dict) and SIDECAR_MARK in data and "settings" in data:
        sub = _Where(str(path))
        sub.lines = {k[1:]: v for k, v in where.lines.items() if k[:1] == ("settings",)}
        return from_dict(data["settings"], sub, None)
    if isinstance(data, dict) and "prompt_map" in data:
        data, notes = importers.from_prompt_travel_json(data, where)
        s = from_dict(data, where, path.parent)
        s.warnings[:0] = notes
        return s
    return from_dict(data, where, path.parent)


def from_text(text: str, source: str = "<schedule>") -> Settings:
    where = _Where(source)
    return from_dict(_compose(text, where), where)


def apply_overrides(s: Settings, **flags) -> Settings:
    """CLI flags win over the file; None means 'not given'."""
    for k in ("width", "height"):
        if flags.get(k) is not None and flags[k] % 8:
            raise usage(f"--{k}: must be a multiple of 8 (the VAE's scale factor), got {flags[k]}")
    if not hasattr(s, "_where"):
        s._where = _Where("command line")
    prompt = flags.pop("prompt", None)
    if prompt is not None:
        s.keyframes = {"0": {"prompt": prompt}}
        s.prompt = ""
    for k, v in flags.items():
        if v is None or v == ():
            continue
        if k in MODEL_KEYS:
            setattr(s.models, k, list(v) if k == "loras" else v)
        elif k in ("context_length", "context_overlap"):
            setattr(s.context, k.split("_")[1], v)
        elif k == "controlnet":
            s.controlnet = list(v)
        else:
            setattr(s, k, v)
    return finish(s)


def from_source(source=None, **flags) -> Settings:
    """A schedule file (or an already read Settings, or nothing) with CLI-like flags applied;
    `s._sources` says which model settings came from flags."""
    if isinstance(source, Settings):
        s = source
    else:
        s = load(Path(source)) if source is not None else Settings()
    s = apply_overrides(s, **flags)
    s._sources = {k: "flag" for k, v in flags.items() if k in MODEL_KEYS and v not in (None, ())}
    return s


def dumps(s: Settings) -> str:
    return json.dumps(s.to_dict(), indent=2)
