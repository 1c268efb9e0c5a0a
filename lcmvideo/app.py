"""The commands' work, callable from Python: settings in, files out."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import schedule
from .api import embedded_note
from .errors import LcmvideoError, runtime, usage
from .schedule import MODEL_KEYS, Settings
from .version import __version__


def parse_seeds(text: str) -> list[int]:
    """'1-4,9' -> [1, 2, 3, 4, 9]."""
    seeds = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise usage(f"--seeds: '{text}' is not a list of seeds or ranges like 1-16,20") from None
        if lo < 0 or hi < lo:
            raise usage(f"--seeds: '{part}' is not a range of seeds (low-high, 0 or more)")
        seeds += range(lo, hi + 1)
    return seeds


def expand_jobs(sources: list[Path], seeds: list[int] | None, output: Path | None, fmt: str | None = None
                ) -> list[tuple]:
    """(schedule file or None, output, seed, clip) per job: files (folders and globs expanded) x their
    clips x seeds."""
    files: list[Path | None] = []
    for src in sources or [None]:
        if src is not None and src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix.lower() in (".yaml", ".yml", ".json", ".txt")
                            and not p.name.endswith((".mp4.json", ".gif.json")))
        elif src is not None and any(c in str(src) for c in "*?[") and not src.exists():
            files += sorted(Path().glob(str(src))) if not src.is_absolute() else sorted(
                Path(src.anchor).glob(str(src.relative_to(src.anchor))))
        else:
            files.append(src)
    if not files:
        raise usage(f"no schedule files in {', '.join(map(str, sources))}")
    counts = [_clip_count(f) for f in files]
    many = len(files) > 1 or (seeds and len(seeds) > 1) or any(n > 1 for n in counts)
    if many and output is not None and output.suffix:
        raise usage(f"-o: {output}: several jobs need a folder for their outputs, not a file name")
    jobs = []
    ext = {"gif": ".gif", "png": ""}.get(fmt or "", ".mp4")
    for f, count in zip(files, counts):
        for clip in range(count) if count > 1 else [None]:
            for seed in seeds or [None]:
                stem = f.name.split(".")[0] if f else "lcmvideo"
                stem = f"{stem}-{clip}" if clip is not None else stem
                name = f"{stem}-s{seed}" if seed is not None and seeds and len(seeds) > 1 else stem
                out = (output / f"{name}{ext}") if many and output is not None else (
                    output if output is not None else (Path(f"{name}{ext}") if many else None))
                jobs.append((f, out, seed, clip))
    return jobs


def _clip_count(f: Path | None) -> int:
    """Clips in a file (the older AnimateDiff config holds one per prompt); a file that does not
    read counts as one, and its job reports the error."""
    if f is None or not f.is_file():
        return 1
    try:
        return schedule.read.clips(f)
    except LcmvideoError:
        return 1


def job_key(schedule_file: Path | None, overrides: dict) -> str:
    """What makes a job's output: the file's text and the flags. Same key + output present = done."""
    import hashlib

    text = schedule_file.read_bytes() if schedule_file and schedule_file.is_file() else b""
    blob = json.dumps({k: repr(v) for k, v in sorted(overrides.items())}).encode() + text + __version__.encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _done(out: Path | None, key: str) -> bool:
    from .output.video import sidecar_path

    if out is None or not out.exists():
        return False
    try:
        return json.loads(sidecar_path(out).read_text())[schedule.SIDECAR_MARK].get("job") == key
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def render_command(schedule_files: list[Path], flags: dict, say=print, quiet: bool = False, verbose: int = 0,
                   watch: bool = False, max_renders: int | None = None, seeds: str | None = None,
                   session=None, workers: int = 1, ray: str | None = None) -> list[Path]:
    """One clip, a batch (files x seeds; a bad job fails alone), or a watch loop."""
    from . import batch
    from .api import Session

    if watch and (workers > 1 or ray is not None):
        raise usage("--watch renders in this process; it does not go with --workers or --ray")
    model_flags = {k: v for k, v in flags.items() if k in MODEL_KEYS and v not in (None, ())}
    overrides = {k: v for k, v in flags.items() if k not in MODEL_KEYS and k != "output" and v not in (None, ())}
    output = Path(flags["output"]).expanduser() if flags.get("output") else None
    if watch:
        if len(schedule_files) != 1 or schedule_files[0].is_dir():
            raise usage("--watch: give exactly one schedule file")
        session = session or Session(quiet=quiet, verbose=verbose, say=say, **model_flags)
        return watch_loop(session, schedule_files[0], output, overrides, say, max_renders)
    jobs = expand_jobs(schedule_files, parse_seeds(seeds) if seeds else None, output, flags.get("format"))
    parallel = workers > 1 or ray is not None
    if len(jobs) == 1 and not parallel:
        f, out, seed, clip = jobs[0]
        session = session or Session(quiet=quiet, verbose=verbose, say=say, **model_flags)
        return [session.render_to_file(f, out, **overrides, **({"seed": seed} if seed is not None else {}),
                                       **({"clip": clip} if clip is not None else {}))]
    if output is not None and not output.suffix:  # -o DIR for several jobs: made when missing
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise usage(f"-o: cannot make the folder {output}: {e.strerror or e}") from None
    pending, written = _pending(jobs, overrides, say)
    if ray is not None:
        results = batch.run_ray(pending, model_flags, ray or None, workers if workers > 1 else None, quiet)
    elif workers > 1:
        results = batch.run_local(pending, model_flags, workers, quiet)
    else:
        from tqdm import tqdm

        session = session or Session(quiet=quiet, verbose=verbose, say=say, **model_flags)
        results = tqdm((batch.run_job(j, session) for j in pending), total=len(pending), desc="jobs",
                       disable=quiet, leave=False)
    return _collect(results, written, say)


def _pending(jobs: list[tuple], overrides: dict, say) -> tuple[list[tuple], list[Path]]:
    """Job tuples for batch.run_job, and the outputs of jobs already done (skipped)."""
    pending, done = [], []
    for f, out, seed, clip in jobs:
        job = {**overrides, **({"seed": seed} if seed is not None else {}), **({"clip": clip} if clip is not None else {})}
        key = job_key(f, job)
        label = f"{f or '--prompt'}" + (f" clip {clip}" if clip is not None else "") + (
            f" seed {seed}" if seed is not None else "")
        if _done(out, key):
            say(f"skipping {label}: {out} is done")
            done.append(out)
            continue
        pending.append((str(f.resolve()) if f else None, str(out.resolve()) if out else None, job, key, label))
    return pending, done


def _collect(results, written: list[Path], say) -> list[Path]:
    """Report each job; the batch fails (exit 1) if any job did, after all have run."""
    failed = []
    for status, label, detail in results:
        if status == "ok":
            written.append(Path(detail))
        elif status == "retry":  # its worker died; the job runs once more on a fresh one
            say(f"lcmvideo: {label}: {detail}")
        else:
            say(f"lcmvideo: error: {label}: {detail}")
            failed.append(label)
    total = len(written) + len(failed)
    say(f"batch: {len(written)} of {total} jobs done" + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise runtime(f"{len(failed)} of {total} jobs failed: {', '.join(failed)}")
    return written


def watch_loop(session, schedule_file: Path, output, overrides: dict, say, max_renders=None, poll=0.2) -> list[Path]:
    """Render, then again each time the file changes; a broken edit prints its error and waits."""
    written, last = [], None
    try:
        while True:
            try:
                st = schedule_file.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != last and stamp is not None:
                last = stamp
                try:
                    written.append(session.render_to_file(schedule_file, output, **overrides))
                except LcmvideoError as e:
                    say(f"lcmvideo: error: {e.message}")
                if max_renders and len(written) >= max_renders:
                    return written
                say(f"watching {schedule_file} for changes (Ctrl-C to stop)")
            time.sleep(poll)
    except KeyboardInterrupt:
        say("stopped watching")
        return written


def models_command(schedule_file, flags: dict, as_json: bool = False, echo=print):
    from . import models

    s = schedule.from_source(schedule_file, **{k: v for k, v in flags.items() if k in MODEL_KEYS})
    spec = models.resolve(s.models, s.sources)
    rows = []
    for ref in spec.refs():
        sn = ref.sniffed
        rows.append({"role": ref.role, "path": str(sn.file) if sn else None, "layout": sn.layout if sn else None,
                     "family": sn.family if sn else None, "source": ref.source,
                     **({"weight": ref.weight} if ref.role in ("lora", "motion_lora") else {})})
    if spec.sparsectrl is not None:
        sn = spec.sparsectrl.sniffed
        rows.append({"role": "sparsectrl", "path": str(sn.file), "layout": sn.layout, "family": sn.family,
                     "source": spec.sparsectrl.source})
    found = {role: [str(p) for p in ps] for role, ps in models.discover(spec.models_dir).items()} \
        if spec.models_dir else {}
    embeddings = [{"name": r.key, "path": str(r.path), "vectors": r.sniffed.detail.get("vectors"),
                   "source": r.source} for r in spec.embeddings]
    if as_json:
        echo(json.dumps({"models": rows, "device": spec.device, "dtype": spec.dtype, "fuse": spec.fuse,
                         "lcm_lora_scale": spec.lcm_lora_scale, "embedded": spec.embedded,
                         "vae": "the base model's own" if spec.vae is None else str(spec.vae.path),
                         "embeddings": embeddings, "clip_skip": spec.clip_skip, "sampler": spec.sampler,
                         "gamma": spec.gamma, "notes": spec.notes,
                         "models_dir": str(spec.models_dir) if spec.models_dir else None, "found": found}, indent=2))
        return
    if spec.embedded:
        echo(embedded_note())
    col = max([10] + [len(r["role"]) + 1 for r in rows])  # "controlnet", "sparsectrl" are wider than the rest
    pad = " " * col
    for r in rows:
        what = f"{r['family']}, {r['layout']} layout" if r["path"] else "none"
        w = f" x{r['weight']:g}" if "weight" in r else ""
        echo(f"{r['role']:<{col}}{r['path'] or '-'}{w}\n{pad}{what}; from {r['source']}")
    if spec.vae is None:
        echo(f"{'vae':<{col}}the base model's own")
    for e in embeddings:
        echo(f"{'embedding':<{col}}{e['name']} ({e['vectors']} vector{'s' if e['vectors'] != 1 else ''}): {e['path']}\n"
             f"{pad}from {e['source']}")
    echo(f"{'device':<{col}}{spec.device} ({spec.dtype}); LoRAs {'fused' if spec.fuse else 'as adapters'}, "
         f"LCM-LoRA scale {spec.lcm_lora_scale:g}")
    echo(f"{'sampling':<{col}}{spec.sampler}" + (f" (gamma {spec.gamma:g})" if spec.sampler == "tcd" else "")
         + f"; clip skip {spec.clip_skip}" + ("; LCM-LoRA scale over the steps (lcm_map)" if spec.lcm_map else ""))
    for note in spec.notes:
        echo(f"note: {note}")
    if spec.models_dir:
        echo(f"\nfound in {spec.models_dir}:")
        for role, paths in found.items():
            echo(f"  {role}: " + (", ".join(Path(p).name for p in paths) if paths else "-"))


def plan_table(s: Settings, source: str) -> dict:
    """What `lcmvideo plan` shows, as data."""
    from .pipeline import control, text
    from .schedule import windows

    rows = schedule.plan(s)
    kfs = s.resolved
    wins = windows(s.frames, s.context.length, s.context.overlap, s.loop)
    names = embedding_names(s)
    warnings = list(s.warnings)

    def used(text_: str) -> list[str]:
        found, missing = text.embeddings_in(text_, names)
        warnings.extend(f"embedding:{m}: no such embedding in --embedding or --models-dir" for m in missing
                        if f"embedding:{m}: no such embedding in --embedding or --models-dir" not in warnings)
        return [names[n] for n in found]

    return {
        "source": source, "frames": s.frames, "interpolation": s.interpolation, "hold": s.hold, "loop": s.loop,
        "context": {"length": s.context.length, "overlap": s.context.overlap,
                    "windows": [[w[0], w[-1]] for w in wins]},
        "keyframes": [{"key": k.key, "frame": k.frame, "prompt": schedule.full_prompt(s, k),
                       "negative_prompt": schedule.negative_for(s, k),
                       "embeddings": used(schedule.full_prompt(s, k)),
                       "negative_embeddings": used(schedule.negative_for(s, k)), **k.params} for k in kfs],
        "rows": [{"frame": r.frame, "blend": [{"keyframe": kfs[i].frame, "weight": round(w, 4)} for i, w in r.blend],
                  "params": {p: round(v, 4) for p, v in r.params.items()}} for r in rows],
        "controlnet": [{"model": c.model or "embedded", "source": c.source[1], "scale": c.scale,
                        "frames": control.assignment(c, s.frames)} for c in s.controlnet],
        "warnings": warnings,
    }


def embedding_names(s: Settings) -> dict[str, str]:
    """Lower-case name -> name of the embeddings a render would know: the files named in the settings
    and those in --models-dir's embeddings folders (listed, not read: `plan` loads nothing)."""
    import os

    from .models import WEIGHT_EXTS, discover

    stems = [Path(p).stem if Path(p).suffix.lower() in WEIGHT_EXTS else Path(p).name for p in s.models.embeddings]
    names = {n.lower(): n for n in stems}
    models_dir = s.models.models_dir or os.environ.get("LCMVIDEO_MODELS_DIR")
    if models_dir and Path(models_dir).expanduser().is_dir():
        for p in discover(Path(models_dir).expanduser()).get("embedding", []):
            names.setdefault(p.stem.lower(), p.stem)
    return names


def plan_command(schedule_file: Path, flags: dict, as_json: bool = False, echo=print):
    s = schedule.from_source(schedule_file, **flags)
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
        if k["embeddings"] or k["negative_embeddings"]:
            echo("             embeddings: " + ", ".join(k["embeddings"] or ["-"])
                 + (f"; in the negative: {', '.join(k['negative_embeddings'])}" if k["negative_embeddings"] else ""))
    names = list(t["rows"][0]["params"])  # the travelled parameters
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


def convert_command(source: Path, output: Path | None, echo=print, clip: int | None = None):
    import yaml

    s = schedule.load(source, clip)
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
    from .output.atomic import write_text

    if not Path(output).resolve().parent.is_dir():
        raise usage(f"{output}: the folder {Path(output).resolve().parent} does not exist")
    write_text(output, text)
    echo(f"wrote {output}", err=True)


def live_command(schedule_file, model_flags: dict, o: dict, say=print, quiet: bool = False, verbose: int = 0):
    """Load the models once, open the source, run the live loop (in a window, headless, or behind
    the web page), print the summary."""
    import signal

    from . import live
    from .api import Session
    from .pipeline import img2img
    from .schedule import full_prompt

    serve, sock, token = o.get("serve", False), None, None
    if serve:  # bound before the models load: a busy port fails at once
        from .web import server as web

        token = web.make_token(o["host"], o["token"])
        sock = web.bind(o["host"], o["port"])
    try:
        session = Session(quiet=quiet, verbose=verbose, say=say, **model_flags)
        s = session.settings(schedule_file, prompt=o["prompts"][0] if o["prompts"] else None, steps=o["steps"])
        prompts = o["prompts"] or [full_prompt(s, k) for k in s.resolved]
        if not prompts or not any(prompts):
            raise usage("live: give --prompt (repeatable) or a schedule file with prompts")
        models = session.models(s)
        native = models.native_size
        w, h = o["width"] or native, o["height"] or native
        if w % 8 or h % 8:
            raise usage(f"--width/--height: must be multiples of 8, got {w}x{h}")
        controls = None
        if o["controlnet"]:
            controls = live_controls(models, o["controlnet"], o["control_map"], w, h, o["fit"])
        sty = img2img.Stylizer(models, steps=o["steps"], guidance=o["guidance"], seed=o["seed"],
                               negative_prompt=s.negative_prompt)
        if o.get("stream_batch"):
            sty = img2img.StreamBatch(sty)
        browser_camera = serve and o["camera"] is None and o["source"] is None
        src = None if browser_camera else live.open_source(o["camera"], o["source"], o["loop"])
        opts = live.Options(prompts=prompts, strength=o["strength"], width=w, height=h, fit=o["fit"], out=o["out"],
                            fps=o["fps"], max_frames=o["max_frames"], duration=o["duration"],
                            similarity=o["similarity"], window=o["window"] and not serve,
                            virtual_cam=o["virtual_cam"], seed=o["seed"])
        open_browser = o.get("open_browser", False)
        if opts.window and not serve and live.has_display() and not live.display_available()[0]:
            from .web import server as web

            say(f"no window: {live.display_available()[1]}; showing the page in the browser instead")
            serve, open_browser, opts.window = True, True, False
            sock = web.bind("127.0.0.1", 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as KeyboardInterrupt, handled in run()
        if serve:
            summary = web.serve(sty, src, opts, sock, o.get("host", "127.0.0.1") if o.get("serve") else "127.0.0.1",
                                token, say=say, controls=controls, open_browser=open_browser, tls=o.get("tls"),
                                announce=lambda m: print(m, flush=True))
        else:
            summary = live.run(sty, src, opts, say=say, controls=controls)
    finally:
        if sock is not None:
            sock.close()
    echo = say if quiet else (lambda m: print(m, flush=True))
    echo(summary.line())
    if summary.recording:
        echo(f"recorded {summary.recording}: {summary.recorded} frames")
    if summary.interrupted:
        raise KeyboardInterrupt
    return summary


def live_controls(models, model: str, kind: str, width: int, height: int, fit: str = "crop"):
    """A function frame -> [Control] conditioning on a map of that frame, drawn by the annotator of
    source `kind` (control.ANNOTATED): its pose (pose extra), Canny edges, or where its shape is."""
    import torch

    from .models import resolve_controlnet
    from .output.images import fit as fit_to
    from .pipeline import control, pose
    from .pipeline.denoise import Control

    net = models.controlnet(resolve_controlnet(model, models.spec, "--controlnet"))
    if kind == "pose_from":  # one estimator for the whole stream, not one per frame
        est = pose.MediaPipePose()

        def draw(frame):
            return pose.draw(est(frame), width, height)
    else:
        def draw(frame):
            return control.annotate(kind, fit_to(frame, width, height, fit)[None])[0]
    dtype, device = models.pipe.unet.dtype, models.spec.device

    def controls(frame):
        t = torch.from_numpy(draw(frame)).to(device).permute(2, 0, 1)[None].to(dtype) / 255.0
        return [Control(net, t, torch.ones(1, device=device, dtype=dtype))]

    return controls
