"""Schedules in the formats users already have, turned into lcmvideo's own (a dict for from_dict).

- animatediff-cli-prompt-travel JSON (`prompt_map`, `head_prompt`, `tail_prompt`, `n_prompt`,
  `seed`, `steps`, `guidance_scale`, `lora_map`, `vae_path`, `clip_skip`, `lcm_map`, ...)
- the A1111 prompt box of sd-webui-animatediff: head lines, `N: prompt` lines, tail lines.

Whatever has no counterpart is listed in the returned notes, never dropped silently.
"""

from __future__ import annotations

import re

from ..errors import usage

KEYFRAME_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(.*)$")
LORA_TAG = re.compile(r"<lora:[^>]*>")
CARRIED = {"name", "path", "motion_module", "seed", "steps", "guidance_scale", "head_prompt", "prompt_map",
           "tail_prompt", "n_prompt", "lora_map", "output", "vae_path", "clip_skip", "lcm_map"}
IGNORED_QUIETLY = {"compile"}  # a speed switch


def from_prompt_travel_json(data: dict, where) -> tuple[dict, list[str]]:
    notes = []
    src = where.source
    pm = data.get("prompt_map")
    if not isinstance(pm, dict) or not pm:
        raise where(("prompt_map",), "expected a mapping of frame: prompt")
    out: dict = {"keyframes": {}}
    for k, v in pm.items():
        out["keyframes"][k] = v
        where.lines.setdefault(("keyframes", k), where.lines.get(("prompt_map", k)))
    last = max(int(float(k)) for k in pm)
    out["frames"] = last + 16
    notes.append(f"{src}: frames: not in this format (animatediff-cli takes -L); using the last keyframe + 16 = "
                 f"{last + 16}, set --frames to change it")
    for theirs, ours in (("head_prompt", "head"), ("tail_prompt", "tail"), ("steps", "steps"),
                         ("guidance_scale", "guidance")):
        if data.get(theirs) not in (None, ""):
            out[ours] = data[theirs]
    seed = data.get("seed")
    if isinstance(seed, list):
        if len(seed) > 1:
            notes.append(f"{src}: seed: {len(seed)} seeds given; using the first ({seed[0]})")
        seed = seed[0] if seed else None
    if seed is not None and seed != -1:
        out["seed"] = seed
    neg = data.get("n_prompt")
    if isinstance(neg, list):
        neg = neg[0] if neg else ""
    if neg:
        out["negative_prompt"] = neg
    models = {}
    if data.get("path"):
        models["base"] = data["path"]
    if data.get("motion_module"):
        models["motion"] = data["motion_module"]
    if isinstance(data.get("lora_map"), dict) and data["lora_map"]:
        models["loras"] = [{"path": p, "weight": w} for p, w in data["lora_map"].items()]
    if data.get("vae_path"):
        models["vae"] = data["vae_path"]
        where.lines.setdefault(("models", "vae"), where.lines.get(("vae_path",)))
    if data.get("clip_skip") is not None:
        models["clip_skip"] = data["clip_skip"]
        where.lines.setdefault(("models", "clip_skip"), where.lines.get(("clip_skip",)))
    lcm_map = data.get("lcm_map")
    if isinstance(lcm_map, dict) and lcm_map:
        if lcm_map.get("enable") is False:
            notes.append(f"{src}: lcm_map is disabled there (enable: false); lcmvideo always samples with the "
                         "LCM-LoRA, at lcm_lora_scale")
        else:
            models["lcm_map"] = {k: v for k, v in lcm_map.items() if k != "enable"}
            for k in models["lcm_map"]:
                where.lines.setdefault(("models", "lcm_map", k), where.lines.get(("lcm_map", k)))
    if models:
        out["models"] = models
    o = data.get("output")
    if isinstance(o, dict):
        if "fps" in o:
            out["fps"] = o["fps"]
        if o.get("format") in ("gif", "mp4"):
            out["format"] = o["format"]
    if data.get("scheduler"):
        notes.append(f"{src}: scheduler {data['scheduler']!r} not carried over: lcmvideo samples the LCM-LoRA "
                     "with lcm or tcd (models.sampler)")
    for k in sorted(set(data) - CARRIED - IGNORED_QUIETLY - {"scheduler"}):
        if data[k] not in (None, {}, [], "", False):
            notes.append(f"{src}: {k} not carried over")
    return out, notes


def from_prompt_box(text: str, where) -> tuple[dict, list[str]]:
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
    return out, [f"{where.source}: {notes}"] if notes else []
