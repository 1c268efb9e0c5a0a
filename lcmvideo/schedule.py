"""Schedule files: what to render, validated with the file, key path and line in every error.

Pure Python (PyYAML, no torch) so `lcmvideo plan`-like tools and `--help` stay fast.
JSON files are read by the same YAML loader (JSON is YAML); keys may be quoted or not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import usage


@dataclass
class LoraRef:
    path: str
    weight: float = 1.0  # multiplier on the LoRA's own alpha/rank scale


@dataclass
class ModelPaths:
    base: str | None = None  # SD1.5: diffusers folder, HF cache id, single .safetensors/.ckpt, or a name in models_dir
    motion: str | None = None  # AnimateDiff motion module: diffusers folder or original single file
    lcm_lora: str | None = None  # LCM-LoRA file/folder; "none" for an LCM-distilled base
    lcm_lora_scale: float = 1.0  # strength of the LCM-LoRA
    loras: list[LoraRef] = field(default_factory=list)  # extra style LoRAs
    models_dir: str | None = None  # an A1111/ComfyUI folder to find models in by name
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16
    fuse: bool = True  # fuse LoRAs into the weights (faster); false keeps them as adapters


@dataclass
class Settings:
    prompt: str = ""  # the prompt of frame 0 (see keyframes)
    keyframes: dict[int, str] = field(default_factory=dict)  # frame -> prompt; one entry until prompt travel lands
    negative_prompt: str = ""  # used only when guidance > 1
    frames: int = 16  # clip length in frames
    width: int | None = None  # pixels, multiple of 8; None = the model's native size
    height: int | None = None
    fps: float = 8.0  # frames per second of the output
    steps: int = 4  # LCM denoising steps; 2-8 is LCM's range
    guidance: float = 1.0  # classifier-free guidance; <= 1 turns CFG off (half the UNet work)
    seed: int | None = None  # None = a random seed, printed and recorded
    models: ModelPaths = field(default_factory=ModelPaths)
    output: str | None = None  # .mp4, .gif or a folder for PNG frames
    format: str | None = None  # mp4 | gif | png; None = from the output's extension

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keyframes"] = {str(k): v for k, v in self.keyframes.items()}
        return d


class _Where:
    """Maps key paths to source lines, so errors can say where."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[tuple, int] = {}

    def __call__(self, path: tuple, message: str) -> Exception:
        keys = "".join(f"[{p}]" if isinstance(p, Index) else "." + _quote(p) for p in path).lstrip(".")
        line = self.lines.get(path)
        at = f" (line {line})" if line else ""
        return usage(f"{self.source}: {keys}{at}: {message}" if keys else f"{self.source}: {message}")


class Index(int):
    """A list position in a key path, shown as [i]."""


def _quote(key) -> str:
    return f'"{key}"' if isinstance(key, (int, float)) or (isinstance(key, str) and key.lstrip("-").isdigit()) else str(key)


def _compose(text: str, where: _Where) -> Any:
    """YAML -> Python, recording the line of every mapping key."""
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

    def build(n, path):
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = _scalar(k)
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
        return _scalar(n)

    return build(node, ())


def _scalar(n):
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(n, deep=True)
    finally:
        loader.dispose()


def _check_keys(d: dict, cls, path: tuple, where: _Where, extra=()):
    allowed = {f.name for f in fields(cls)} | set(extra)
    for k in d:
        if k not in allowed:
            raise where(path + (k,), f"unknown key; expected one of: {', '.join(sorted(allowed))}")


def _num(v, path, where, kind=float, lo=None, hi=None, what="a number"):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and isinstance(v, float) and not v.is_integer()):
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


def _models(d, path, where, base_dir: Path | None) -> ModelPaths:
    if not isinstance(d, dict):
        raise where(path, f"expected a mapping of model paths, got {d!r}")
    _check_keys(d, ModelPaths, path, where)
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
        m.lcm_lora_scale = _num(d["lcm_lora_scale"], path + ("lcm_lora_scale",), where, lo=0.0)
    if "fuse" in d:
        if not isinstance(d["fuse"], bool):
            raise where(path + ("fuse",), f"expected true or false, got {d['fuse']!r}")
        m.fuse = d["fuse"]
    loras = d.get("loras", [])
    if not isinstance(loras, list):
        raise where(path + ("loras",), "expected a list of {path, weight} or 'PATH[:WEIGHT]' entries")
    for i, item in enumerate(loras):
        p = path + ("loras", Index(i))
        if isinstance(item, str):
            ref = parse_lora(item, lambda msg: where(p, msg))
        elif isinstance(item, dict):
            _check_keys(item, LoraRef, p, where)
            if "path" not in item:
                raise where(p, "missing key 'path'")
            ref = LoraRef(_str(item["path"], p + ("path",), where),
                          _num(item.get("weight", 1.0), p + ("weight",), where))
        else:
            raise where(p, f"expected a mapping or 'PATH[:WEIGHT]', got {item!r}")
        m.loras.append(LoraRef(rel(ref.path), ref.weight))
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


def from_dict(d: Any, where: _Where, base_dir: Path | None = None) -> Settings:
    if not isinstance(d, dict):
        raise where((), "expected a mapping of settings at the top level")
    _check_keys(d, Settings, (), where)
    s = Settings()
    if "prompt" in d:
        s.prompt = _str(d["prompt"], ("prompt",), where)
    if "keyframes" in d:
        kf = d["keyframes"]
        if not isinstance(kf, dict) or not kf:
            raise where(("keyframes",), "expected a mapping of frame: prompt")
        for k, v in kf.items():
            try:
                frame = int(k)
            except (TypeError, ValueError):
                raise where(("keyframes", k), "a keyframe's key must be a frame number") from None
            s.keyframes[frame] = _str(v, ("keyframes", k), where)
            where.lines.setdefault(("keyframes", frame), where.lines.get(("keyframes", k)))
    if "negative_prompt" in d:
        s.negative_prompt = _str(d["negative_prompt"], ("negative_prompt",), where) or ""
    if "frames" in d:
        s.frames = _num(d["frames"], ("frames",), where, int, lo=1, what="a whole number of frames")
    for k in ("width", "height"):
        if d.get(k) is not None:
            v = _num(d[k], (k,), where, int, lo=8, hi=4096, what="a whole number of pixels")
            if v % 8:
                raise where((k,), f"must be a multiple of 8 (the VAE's scale factor), got {v}")
            setattr(s, k, v)
    if "fps" in d:
        s.fps = _num(d["fps"], ("fps",), where, lo=0.1, hi=240)
    if "steps" in d:
        s.steps = _num(d["steps"], ("steps",), where, int, lo=1, hi=100, what="a whole number of steps")
    if "guidance" in d:
        s.guidance = _num(d["guidance"], ("guidance",), where, lo=0.0, hi=30.0)
    if d.get("seed") is not None:
        s.seed = _num(d["seed"], ("seed",), where, int, lo=0, hi=2**63 - 1, what="a whole number")
    if "models" in d:
        s.models = _models(d["models"], ("models",), where, base_dir)
    if "output" in d:
        s.output = _str(d["output"], ("output",), where, optional=True)
        if s.output and base_dir is not None and not Path(s.output).expanduser().is_absolute():
            s.output = str(base_dir / s.output)
    if "format" in d:
        s.format = _str(d["format"], ("format",), where, optional=True)
    return finish(s, where)


def finish(s: Settings, where: _Where) -> Settings:
    """Cross-field rules, checked again after CLI overrides."""
    if s.keyframes and s.prompt:
        raise where(("prompt",), "give either 'prompt' or 'keyframes', not both")
    if s.prompt:
        s.keyframes = {0: s.prompt}
        s.prompt = ""
    for frame in s.keyframes:
        if not 0 <= frame < s.frames:
            raise where(("keyframes", frame), f"frame {frame} is beyond the clip (frames: {s.frames})")
    if s.keyframes and 0 not in s.keyframes:
        raise where(("keyframes",), "frame 0 needs a prompt (the clip starts there)")
    if len(s.keyframes) > 1:
        raise where(("keyframes",), "several keyframes (prompt travel) are not supported yet; give one prompt")
    return s


SIDECAR_MARK = "lcmvideo"


def load(path: Path) -> Settings:
    """Read a schedule file, or the sidecar JSON of an earlier render (its `settings`)."""
    path = Path(path)
    where = _Where(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise usage(f"{path}: no such schedule file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise usage(f"{path}: cannot read the schedule file: {e}") from None
    data = _compose(text, where)
    if isinstance(data, dict) and SIDECAR_MARK in data and "settings" in data:
        sub = _Where(str(path))
        sub.lines = {k[1:]: v for k, v in where.lines.items() if k[:1] == ("settings",)}
        s = from_dict(data["settings"], sub, None)
        return s
    return from_dict(data, where, path.parent)


def from_text(text: str, source: str = "<schedule>") -> Settings:
    where = _Where(source)
    return from_dict(_compose(text, where), where)


def apply_overrides(s: Settings, source: str = "command line", **flags) -> Settings:
    """CLI flags win over the file; None means 'not given'."""
    where = _Where(source)
    if flags.get("prompt") is not None:
        s.keyframes = {0: flags.pop("prompt")}
        s.prompt = ""
    flags.pop("prompt", None)
    for k, v in flags.items():
        if v is None or v == ():
            continue
        if k in {f.name for f in fields(ModelPaths)}:
            setattr(s.models, k, list(v) if k == "loras" else v)
        else:
            setattr(s, k, v)
    return finish(s, where)


def dumps(s: Settings) -> str:
    return json.dumps(s.to_dict(), indent=2)
