"""The commands' work, callable from Python: settings in, files out."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from . import __version__, schedule
from .schedule import Settings

MODEL_KEYS = {"base", "motion", "lcm_lora", "lcm_lora_scale", "loras", "fuse", "models_dir", "device", "dtype"}
EMBEDDED_NOTE = ("using the embedded tiny model family: untrained, for trying the tool; "
                 "pass --model/--motion/--lcm-lora (or set LCMVIDEO_MODELS_DIR) for real clips")


def settings_for(schedule_file: Path | None, flags: dict) -> tuple[Settings, dict]:
    """Schedule file + flags -> Settings, and where each model setting came from."""
    s = schedule.load(schedule_file) if schedule_file else Settings()
    sources = {k: "flag" for k, v in flags.items() if k in MODEL_KEYS and v not in (None, ())}
    s = schedule.apply_overrides(s, **flags)
    return s, sources


def default_output(schedule_file: Path | None, s: Settings) -> Path:
    if s.output:
        return Path(s.output).expanduser()
    stem = schedule_file.name.split(".")[0] if schedule_file else "lcmvideo"
    return Path(f"{stem}.{s.format or 'mp4'}") if (s.format or "mp4") != "png" else Path(stem)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"lcmvideo": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "peft", "numpy", "imageio", "imageio-ffmpeg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def recorded_settings(s: Settings, spec) -> dict:
    """The settings as a schedule that re-renders the same frames: models by absolute path."""
    d = s.to_dict()
    m = d["models"]
    m["base"] = None if spec.embedded else str(spec.base.path.resolve())
    m["motion"] = None if spec.embedded else str(spec.motion.path.resolve())
    m["lcm_lora"] = "none" if spec.lcm_lora.path is None else (
        None if spec.embedded else str(spec.lcm_lora.path.resolve()))
    m["loras"] = [{"path": str(r.path.resolve()), "weight": r.weight} for r in spec.loras]
    m["models_dir"] = None
    m["device"], m["dtype"] = spec.device, spec.dtype
    d.pop("prompt", None)
    d["output"] = None
    return d


def render_command(schedule_file, flags: dict, say=print, quiet: bool = False, verbose: int = 0) -> Path:
    from . import models, render, video

    t0 = time.perf_counter()
    s, sources = settings_for(schedule_file, flags)
    schedule.require_prompt(s)
    out = default_output(schedule_file, s)
    fmt = video.format_for(out, s.format)
    video.check_writable(out, fmt)
    spec = models.resolve(s.models, sources)
    if spec.embedded:
        say(EMBEDDED_NOTE)
    for w in s.warnings:
        say(f"warning: {w}")
    if spec.fuse and schedule.travels_lora(s):
        spec.fuse = False
        say("note: LoRA weights travel in this schedule, so LoRAs stay unfused (per-window weights, slower)")
    loaded = models.load(spec, verbose=verbose > 0, quiet=quiet)
    t_load = time.perf_counter()
    frames = render.render(loaded, s, quiet=quiet)
    t_render = time.perf_counter()
    meta = {
        schedule.SIDECAR_MARK: {"version": __version__, "command": "render", "format": fmt},
        "settings": recorded_settings(s, spec),
        "models": models.describe(spec),
        "versions": versions(),
        "output": {"frames": int(frames.shape[0]), "width": int(frames.shape[2]), "height": int(frames.shape[1]),
                   "fps": s.fps, "seed": s.seed},
        "timing_s": {"load": round(t_load - t0, 3), "render": round(t_render - t_load, 3)},
    }
    video.write(frames, out, s.fps, fmt, meta, quiet=quiet)
    say(f"wrote {out}: {frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {s.fps:g} fps, "
        f"seed {s.seed} ({time.perf_counter() - t0:.1f}s)")
    return out


def models_command(schedule_file, flags: dict, as_json: bool = False, echo=print):
    from . import models

    s, sources = settings_for(schedule_file, {k: v for k, v in flags.items() if k in MODEL_KEYS})
    spec = models.resolve(s.models, sources)
    rows = []
    for ref in spec.refs():
        sn = ref.sniffed
        rows.append({"role": ref.role, "path": str(sn.file) if sn else None, "layout": sn.layout if sn else None,
                     "family": sn.family if sn else None, "source": ref.source,
                     **({"weight": ref.weight} if ref.role == "lora" else {})})
    found = {role: [str(p) for p in ps] for role, ps in models.discover(spec.models_dir).items()} \
        if spec.models_dir else {}
    if as_json:
        echo(json.dumps({"models": rows, "device": spec.device, "dtype": spec.dtype, "fuse": spec.fuse,
                         "lcm_lora_scale": spec.lcm_lora_scale, "embedded": spec.embedded,
                         "models_dir": str(spec.models_dir) if spec.models_dir else None, "found": found}, indent=2))
        return
    if spec.embedded:
        echo(EMBEDDED_NOTE)
    for r in rows:
        what = f"{r['family']}, {r['layout']} layout" if r["path"] else "none"
        w = f" x{r['weight']:g}" if "weight" in r else ""
        echo(f"{r['role']:<9} {r['path'] or '-'}{w}\n          {what}; from {r['source']}")
    echo(f"device    {spec.device} ({spec.dtype}); LoRAs {'fused' if spec.fuse else 'as adapters'}, "
         f"LCM-LoRA scale {spec.lcm_lora_scale:g}")
    if spec.models_dir:
        echo(f"\nfound in {spec.models_dir}:")
        for role, paths in found.items():
            echo(f"  {role}: " + (", ".join(Path(p).name for p in paths) if paths else "-"))


def plan_table(s: Settings, source: str) -> dict:
    """What `lcmvideo plan` shows, as data."""
    from . import control
    from .render import windows

    rows = schedule.plan(s)
    kfs = s.resolved
    wins = windows(s.frames, s.context.length, s.context.overlap, s.loop)
    return {
        "source": source, "frames": s.frames, "interpolation": s.interpolation, "hold": s.hold, "loop": s.loop,
        "context": {"length": s.context.length, "overlap": s.context.overlap,
                    "windows": [[w[0], w[-1]] for w in wins]},
        "keyframes": [{"key": k.key, "frame": k.frame, "prompt": schedule.full_prompt(s, k),
                       "negative_prompt": schedule.negative_for(s, k), **k.params} for k in kfs],
        "rows": [{"frame": r.frame, "blend": [{"keyframe": kfs[i].frame, "weight": round(w, 4)} for i, w in r.blend],
                  "params": {p: round(v, 4) for p, v in r.params.items()}} for r in rows],
        "controlnet": [{"model": c.model or "embedded", "source": c.source[1], "scale": c.scale,
                        "frames": control.assignment(c, s.frames)} for c in s.controlnet],
        "warnings": list(s.warnings),
    }


def plan_command(schedule_file: Path, flags: dict, as_json: bool = False, echo=print):
    s, _ = settings_for(schedule_file, flags)
    t = plan_table(s, str(schedule_file))
    if as_json:
        echo(json.dumps(t, indent=2))
        return
    wins = t["context"]["windows"]
    echo(f"{schedule_file}: {t['frames']} frames, {len(t['keyframes'])} keyframe(s), {t['interpolation']} "
         f"interpolation, hold {t['hold']:g}{', loop' if t['loop'] else ''}; context {s.context.length} frames, "
         f"overlap {s.context.overlap} -> {len(wins)} window(s)")
    for k in t["keyframes"]:
        echo(f"  frame {k['frame']:>4} (key {k['key']}): {k['prompt']!r}"
             + (f"  negative: {k['negative_prompt']!r}" if k["negative_prompt"] else ""))
    names = list(t["rows"][0]["params"])
    varying = [p for p in names if len({r["params"][p] for r in t["rows"]}) > 1]
    steady = [f"{p} {t['rows'][0]['params'][p]:g}" for p in names if p not in varying]
    echo("  constant: " + ", ".join(steady))
    cns = t["controlnet"]
    for i, c in enumerate(cns):
        echo(f"  controlnet {i}: {c['model']} x{c['scale']:g}, from {c['source']}")
    echo("frame  blend" + " " * 26 + "".join(f"{p:>17}" for p in varying)
         + "".join(f"  {'control ' + str(i):<18}" for i in range(len(cns))))
    for r in t["rows"]:
        blend = " + ".join(f"{b['weight'] * 100:.0f}% @{b['keyframe']}" for b in r["blend"])
        echo(f"{r['frame']:>5}  {blend:<31}" + "".join(f"{r['params'][p]:>17.3f}" for p in varying)
             + "".join(f"  {c['frames'][r['frame']] or '-':<18}" for c in cns))
    for w in t["warnings"]:
        echo(f"warning: {w}")


def convert_command(source: Path, output: Path | None, echo=print):
    import yaml

    s = schedule.load(source)
    d, defaults = s.to_dict(), Settings().to_dict()
    for k in list(d):  # keep the file short: only what differs from the defaults
        if d[k] == defaults[k]:
            d.pop(k)
    text = yaml.safe_dump(d, sort_keys=False, allow_unicode=True, width=100)
    for w in s.warnings:
        echo(f"note: {w}", err=True)
    if output is None:
        echo(text, nl=False)
        return
    from .errors import usage
    from .video import write_text

    if not Path(output).resolve().parent.is_dir():
        raise usage(f"{output}: the folder {Path(output).resolve().parent} does not exist")
    write_text(output, text)
    echo(f"wrote {output}", err=True)
