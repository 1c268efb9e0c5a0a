"""Prompt schedules as ComfyUI users write them: FizzNodes' BatchPromptSchedule text and
AnimateDiff-Evolved's Prompt Scheduling text, to lcmvideo keyframes.

FizzNodes (BatchFuncs.py): the node drops newlines, wraps the text in braces, drops a trailing comma
and reads JSON; a key may be an expression of `max_f` (numexpr, with max_f = max_frames); frame 0
gets the first prompt when missing; the last prompt holds to `max_frames` (a key at `max_frames`
is blended towards but never reached); `--neg` splits a prompt into positive and negative;
`pre_text`/`app_text` join each prompt with spaces; blends are linear, with no hold.

As a .txt file, lines `max_frames: N`, `pre_text: ...` and `app_text: ...` outside the quoted
pairs say what the node's widgets said.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re

from ..errors import usage

PAIR = re.compile(r'^\s*"[^"\n]*"\s*:')
SETTING = re.compile(r"^\s*(max_frames|pre_text|app_text)\s*[:=]\s*(.*?)\s*$")
BACKTICK = re.compile(r"`[^`]*`")
MAX_FRAMES = 120  # the node's default
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
        ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"sin": math.sin, "cos": math.cos, "tan": math.tan, "abs": abs, "sqrt": math.sqrt, "exp": math.exp,
          "log": math.log, "floor": math.floor, "ceil": math.ceil, "round": round, "min": min, "max": max}


def evaluate(expr: str, names: dict[str, float]) -> float:
    """An arithmetic expression as numexpr reads a schedule key (numbers, + - * / // % **, names,
    a few functions); ValueError when it is anything else."""
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.Name) and n.id in names:
            return names[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and abs(b) > 64:
                raise ValueError("exponent too large")
            return _OPS[type(n.op)](a, b)
        if isinstance(n, ast.UnaryOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.operand))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _FUNCS and not n.keywords:
            return _FUNCS[n.func.id](*[ev(a) for a in n.args])
        raise ValueError(f"not an arithmetic expression: {expr!r}")

    try:
        v = ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError, TypeError, ValueError) as e:
        raise ValueError(str(e) or f"cannot evaluate {expr!r}") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{expr!r} is not a finite number")
    return v


def looks_like_schedule(text: str) -> bool:
    """A FizzNodes/ADE schedule (`"0": "prompt",` lines) rather than an A1111 prompt box."""
    return any(PAIR.match(line) for line in text.splitlines())


def parse_pairs(text: str, source: str) -> dict[str, str]:
    """The node's own reading: newlines dropped, braces round it, a trailing comma dropped, JSON."""
    body = "{" + text.replace("\n", "").replace("\r", "") + "}"
    body = re.sub(r",\s*}", "}", body)
    try:
        data = json.loads(body)
    except ValueError as e:
        raise usage(f"{source}: not a FizzNodes schedule (\"frame\": \"prompt\", pairs): {e}") from None
    if not isinstance(data, dict) or not data:
        raise usage(f'{source}: no "frame": "prompt" pairs found')
    for k, v in data.items():
        if not isinstance(v, str):
            raise usage(f"{source}: key {k!r}: expected a prompt in double quotes, got {v!r}")
    return data


def schedule_keyframes(pairs: dict[str, str], max_frames: int, pre_text: str, app_text: str, source: str,
                       notes: list[str]) -> tuple[dict, int]:
    """FizzNodes pairs -> (lcmvideo keyframes, frames)."""
    frames: dict[int, str] = {}
    for key, prompt in pairs.items():
        try:
            f = evaluate(key, {"max_f": max_frames, "t": 0})
        except ValueError as e:
            raise usage(f"{source}: key {key!r}: a frame number or an expression of max_f is needed ({e})") from None
        if f < 0:
            raise usage(f"{source}: key {key!r}: frame {f:g} is before the start")
        frames[int(f)] = prompt  # numexpr's result, truncated by int() as the node does
    if 0 not in frames:
        notes.append(f"{source}: no frame 0; the first prompt starts the clip, as FizzNodes does")
        frames[0] = frames[min(frames)]
    pre_pos, _, pre_neg = pre_text.partition("--neg")
    app_pos, _, app_neg = app_text.partition("--neg")
    out: dict = {}
    for f in sorted(frames):
        if f > max_frames:
            notes.append(f"{source}: frame {f} is after max_frames ({max_frames}); FizzNodes never reaches it")
            continue
        at = f
        if f == max_frames:  # blended towards until the end, never shown: reached at the last frame here
            if max_frames - 1 in frames:
                continue
            at = max_frames - 1
            notes.append(f"{source}: the keyframe at max_frames ({max_frames}) is placed on the last frame "
                         f"({at}); FizzNodes blends towards it without reaching it")
        prompt = frames[f]
        pos, _, neg = prompt.partition("--neg")
        text = _exprs(" ".join((pre_pos, pos, app_pos)), at, max_frames, source, notes)
        negative = _exprs(" ".join((pre_neg, neg, app_neg)), at, max_frames, source, notes)
        kf = {"prompt": " ".join(text.split())}
        if "--neg" in prompt or "--neg" in pre_text or "--neg" in app_text:
            kf["negative_prompt"] = " ".join(negative.split())
        out[str(at)] = kf
    return out, max_frames


def _exprs(text: str, frame: int, max_frames: int, source: str, notes: list[str]) -> str:
    """`(cat:`0.5+t/max_f`)` weights evaluated at the keyframe's frame (they move per frame there)."""
    def one(m):
        expr = m.group(0)[1:-1]
        try:
            v = evaluate(expr, {"t": frame, "max_f": max_frames - 1, "pw_a": 0, "pw_b": 0, "pw_c": 0, "pw_d": 0})
        except ValueError as e:
            raise usage(f"{source}: the expression `{expr}`: {e}") from None
        note = f"{source}: `{expr}` is evaluated at each keyframe (FizzNodes evaluates it on every frame)"
        if note not in notes:
            notes.append(note)
        return f"{v:g}"
    return BACKTICK.sub(one, text)


def from_text(text: str, where) -> list[tuple[dict, list[str]]]:
    """A .txt of FizzNodes pairs, with optional max_frames/pre_text/app_text lines."""
    source = where.source
    settings, body = {}, []
    for line in text.splitlines():
        m = SETTING.match(line)
        if m and not PAIR.match(line):
            settings[m.group(1)] = m.group(2)
        else:
            body.append(line)
    notes: list[str] = []
    pairs = parse_pairs("\n".join(body), source)
    if "max_frames" in settings:
        try:
            max_frames = int(settings["max_frames"])
        except ValueError:
            raise usage(f"{source}: max_frames: expected a whole number of frames, got "
                        f"{settings['max_frames']!r}") from None
        if not 1 <= max_frames <= 100_000:
            raise usage(f"{source}: max_frames: must be from 1 to 100000, got {max_frames}")
    else:
        max_frames = MAX_FRAMES
        notes.append(f"{source}: max_frames not given (a line 'max_frames: N'); using the node's default "
                     f"{MAX_FRAMES}, set --frames to change it")
    pre, app = (settings.get(k, "").strip().strip('"') for k in ("pre_text", "app_text"))
    keyframes, frames = schedule_keyframes(pairs, max_frames, pre, app, source, notes)
    return [({"keyframes": keyframes, "frames": frames, "hold": 0.0, "interpolation": "linear"}, notes)]


# --- AnimateDiff-Evolved's Prompt Scheduling (scheduling.py) -----------------------------------

ADE_JSON = re.compile(r'"([\d:\-\.]+)\s*"\s*:\s*"([^"]*)"(?:\s*,\s*|$)')
ADE_PYTH = re.compile(r'([\d:\-\.]+)\s*=\s*"([^"]*)"(?:\s*,\s*|$)')


def ade_keyframes(text: str, prepend: str, append: str, source: str, notes: list[str]) -> dict:
    """`"idx": "prompt",` or `idx = "prompt",`; idx a frame, -N from the end, a fraction, `a:b`
    (held from a to b) or `a:` (held until the next)."""
    text = text.strip()
    found = ADE_JSON.findall(text) if text.startswith('"') else ADE_PYTH.findall(text)
    if not found:
        found = ADE_PYTH.findall(text) or ADE_JSON.findall(text)
    if not found:
        raise usage(f'{source}: no "idx": "prompt" pairs in the Prompt Scheduling text')
    out: dict = {}
    for idx, prompt in found:
        start, colon, _end = idx.partition(":")
        try:
            float(start)
        except ValueError:
            raise usage(f"{source}: Prompt Scheduling index {idx!r}: expected a frame, -N or a fraction") from None
        kf = {"prompt": ", ".join(p for p in (prepend.strip(), prompt.strip(), append.strip()) if p)}
        if colon:
            kf["hold"] = 0.99
            if _end:
                notes.append(f"{source}: Prompt Scheduling range {idx}: held from {start} until the next keyframe")
        out[start] = kf
    return out
