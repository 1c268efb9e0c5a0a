"""The per-frame plan of a schedule: keyframes resolved to frames, blends, travelled
parameters and the motion module's context windows. Pure Python, so `lcmvideo plan` is instant."""

from __future__ import annotations

import math

from .parse import Where
from .settings import TRAVEL, FrameRow, Keyframe, Settings


def resolve_frame(key: str, frames: int) -> int | None:
    """'8' -> 8, '-1' -> frames-1, '0.5' -> the frame halfway (round half up of 0.5 * (frames-1))."""
    if "." in key or "e" in key.lower():
        f = float(key)
        if not 0.0 <= f <= 1.0:
            return None
        return math.floor(f * (frames - 1) + 0.5)
    i = int(key)
    return frames + i if i < 0 else i


def finish(s: Settings, where: Where | None = None) -> Settings:
    """Frame-dependent rules and keyframe resolution, on a copy; run again after CLI overrides."""
    s = s.copy()
    where = where or s.where or Where("<settings>")
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
    for r in s.models.motion_loras:
        if r.key in names:
            raise where(("models", "motion_loras"), f"the motion LoRA name {r.key!r} is taken by another LoRA; "
                        "give one of them a 'name' (lora_weights refer to LoRAs by name)")
        names.add(r.key)
    for kf in s.resolved:
        for p in kf.params:
            if p.startswith("lora:") and p[5:] not in names:
                known = ", ".join(sorted(names)) or "none are loaded"
                motion = " or models.motion_loras" if s.models.motion_loras else ""
                raise where(("keyframes", kf.key, "lora_weights", p[5:]),
                            f"no LoRA named {p[5:]!r} in models.loras{motion} ({known})")
    _lint(s, where)
    return s


def _lint(s: Settings, where: Where):
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
        where = s.where or Where("command line")
        raise where(("keyframes",), "no prompt: give 'prompt' or 'keyframes' (or --prompt)")


def plan(s: Settings) -> list[FrameRow]:
    """The resolved per-frame table: which keyframes blend with what weights, and every parameter."""
    require_prompt(s)
    kfs = s.resolved
    points = [(k.frame, k.hold) for k in kfs]
    defaults = {"guidance": s.guidance, "lcm_lora_scale": s.models.lcm_lora_scale,
                "controlnet_scale": s.controlnet_scale, "strength": s.strength, "motion_scale": s.motion_scale}
    defaults.update({f"lora:{r.key}": r.weight for r in [*s.models.loras, *s.models.motion_loras]})
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


def windows(frames: int, length: int, overlap: int, loop: bool = False) -> list[list[int]]:
    """Overlapping runs of frame indices covering the clip; the last one ends on the last frame.

    With `loop`, windows wrap around the end so the last frames are denoised next to the first.
    """
    if frames <= length:
        return [list(range(frames))]
    stride = max(1, length - overlap)
    if loop:
        return [[(s + i) % frames for i in range(length)] for s in range(0, frames, stride)]
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    return [list(range(s, s + length)) for s in starts]
