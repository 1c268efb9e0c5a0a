"""The command line: parse, call one function, map errors to exit codes.

Nothing heavy is imported at module level: `lcmvideo --help` must not load torch or diffusers.
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import LcmvideoError
from .version import __version__

_state: dict = {}  # for main(): whether to show tracebacks
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# restyle's `--controlnet MODEL SOURCE` and live's `--control-map` words for a map drawn from each
# input frame, and the ControlSpec source each stands for (control.ANNOTATED)
INPUT_ANNOTATORS = {"openpose": "pose_from", "canny": "canny_from", "position": "position_from"}


class Ctx:
    def __init__(self, verbose: int, quiet: bool):
        self.verbose = verbose
        self.quiet = quiet

    def say(self, msg: str):
        if not self.quiet:
            click.echo(msg, err=True)


def _examples_last(kw: dict) -> dict:
    """A docstring's closing "Examples:" block becomes the epilog, so --help ends with it."""
    text = kw.get("help") or ""
    head, sep, tail = text.partition("\b\n    Example")
    if sep and not kw.get("epilog"):
        kw["help"], kw["epilog"] = head.rstrip(), "\b\nExample" + tail.replace("\n    ", "\n").rstrip()
    return kw


class Command(click.Command):
    def __init__(self, *args, **kw):
        super().__init__(*args, **_examples_last(kw))


class Group(click.Group):
    """Maps errors to one line and an exit code: 2 usage/config, 1 runtime, 130 Ctrl-C."""

    command_class = Command
    group_class = type  # subgroups are Groups too

    def __init__(self, *args, **kw):
        super().__init__(*args, **_examples_last(kw))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LcmvideoError as e:
            click.echo(f"lcmvideo: error: {e.message}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("lcmvideo: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `lcmvideo plan x.yaml | head`: the reader left, nothing is wrong
            import os
            import sys

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - last resort: one line unless -vv
            if _state.get("verbose", 0) >= 2:
                raise
            from .pipeline.budget import is_out_of_memory, out_of_memory

            if isinstance(e, MemoryError) or is_out_of_memory(e):
                click.echo(f"lcmvideo: error: {out_of_memory()}", err=True)
                ctx.exit(1)
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"lcmvideo: error: {type(e).__name__}: {first} (run with -vv for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="lcmvideo")
@click.option("-v", "--verbose", count=True, help="More output: library logs; twice for tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress bars or notes.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Short videos from Stable Diffusion 1.5 + AnimateDiff + LCM-LoRA, offline.

    With no model given, lcmvideo runs on its embedded shapes-world family: 64x64 coloured
    circles, squares and triangles, trained to follow colour and shape words and to travel
    between prompts, in seconds on a CPU. Point --model/--motion/--lcm-lora (or --models-dir)
    at your SD1.5 files for real clips.

    \b
    Examples:
      lcmvideo render prompts/hello.yaml -o hello.mp4
      lcmvideo restyle in.mp4 -p "a watercolour painting" --strength 0.5
      lcmvideo live --source synthetic -p "a blue circle" --no-window --max-frames 100
    """
    ctx.obj = Ctx(verbose, quiet)
    _state["verbose"] = verbose


def model_options(f):
    """Flags naming models; each also settable in a schedule file's `models:` section."""
    opts = [
        click.option("--model", "base", metavar="PATH|ID|NAME",
                     help="SD1.5 base: diffusers folder, HF cache id, .safetensors/.ckpt, or a name in "
                          "--models-dir. [env: LCMVIDEO_MODEL; default: embedded tiny model]"),
        click.option("--motion", metavar="PATH|ID|NAME",
                     help="AnimateDiff motion module (diffusers folder or mm_sd_v15_v2.ckpt-style file). "
                          "[env: LCMVIDEO_MOTION]"),
        click.option("--lcm-lora", "lcm_lora", metavar="PATH|ID|NAME",
                     help="LCM-LoRA (kohya or diffusers layout), or 'none' for an LCM-distilled model. "
                          "[env: LCMVIDEO_LCM_LORA]"),
        click.option("--lcm-lora-scale", type=float, help="LCM-LoRA strength.  [default: 1.0]"),
        click.option("--lora", "loras", multiple=True, metavar="PATH[:WEIGHT]",
                     help="Extra style LoRA (also AnimateDiff v3's v3_sd15_adapter.ckpt); repeatable."),
        click.option("--motion-lora", "motion_loras", multiple=True, metavar="PATH[:WEIGHT]",
                     help="AnimateDiff MotionLoRA (v2_lora_ZoomIn.ckpt, an animatediff-motion-lora-* folder, "
                          "a name in --models-dir, or embedded:right|left|up|down); repeatable."),
        click.option("--no-fuse", "no_fuse", is_flag=True,
                     help="Keep LoRAs as adapters instead of fusing them into the weights."),
        click.option("--models-dir", metavar="DIR",
                     help="An A1111 or ComfyUI folder to find models in by name. [env: LCMVIDEO_MODELS_DIR]"),
        click.option("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N or mps.  [env: LCMVIDEO_DEVICE; "
                                                     "default: auto]"),
        click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
                     help="Weights' precision.  [default: float16 on GPU, float32 on CPU]"),
        click.option("--vae", metavar="PATH|ID|NAME",
                     help="A VAE to decode (and encode) with: an SD1.5 VAE file (vae-ft-mse-840000-ema-pruned), "
                          "a diffusers folder or HF cache id, or TAESD (taesd_decoder.pth, 'taesd' in "
                          "--models-dir) for speed.  [default: the base model's own]"),
        click.option("--embedding", "embeddings", multiple=True, metavar="PATH",
                     help="A textual-inversion embedding (.pt, .safetensors), named in prompts by its file name "
                          "(BadDream) or as embedding:BadDream; repeatable. --models-dir's embeddings are found too."),
        click.option("--clip-skip", type=click.IntRange(1, 12),
                     help="Text encoder layers to skip, A1111's way: 2 = the penultimate layer.  [default: 1]"),
        click.option("--sampler", type=click.Choice(["lcm", "tcd"]),
                     help="lcm (LCMScheduler) or tcd (TCDScheduler, for TCD-LoRA or the LCM-LoRA).  [default: lcm]"),
        click.option("--gamma", type=click.FloatRange(0, 1),
                     help="--sampler tcd's stochasticity; 0 adds no fresh noise between steps.  [default: 0.3]"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def ip_options(f, note: str = ""):
    """An IP-Adapter: an image as a prompt (the schedule's `ip_adapter`)."""
    opts = [
        click.option("--ip-adapter", metavar="PATH|NAME",
                     help="An SD1.5 IP-Adapter (ip-adapter_sd15, ip-adapter-plus_sd15; .bin or .safetensors), or a "
                          f"name in --models-dir's models/ipadapter. Needs --ip-image.{note}"),
        click.option("--ip-image", metavar="IMAGE[:SCALE]",
                     help="The image prompt, or a folder of images numbered by frame (0000.png, 0016.png) that "
                          "blend between; SCALE its strength.  [default scale: 1.0]"),
        click.option("--ip-encoder", metavar="PATH|NAME",
                     help="The IP-Adapter's CLIP image encoder (a CLIPVisionModelWithProjection folder or a "
                          "clip_vision file).  [default: image_encoder/ beside it, or models/clip_vision]"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def motion_scale_option(f, note: str = ""):
    """The motion modules' effect (the schedule's `motion_scale`): render's and restyle's."""
    return click.option("--motion-scale", type=click.FloatRange(0, 5),
                        help="The motion modules' effect: 0 draws each frame alone, above 1 exaggerates "
                             f"(travels per keyframe as motion_scale).{note}  [default: 1.0]")(f)


def model_flags(base, motion, lcm_lora, lcm_lora_scale, loras, no_fuse, models_dir, device, dtype, vae=None,
                embeddings=(), clip_skip=None, sampler=None, gamma=None, motion_loras=()) -> dict:
    import os

    from .schedule import parse_lora

    return dict(base=base, motion=motion, lcm_lora=lcm_lora, lcm_lora_scale=lcm_lora_scale,
                loras=tuple(parse_lora(x) for x in loras), fuse=False if no_fuse else None,
                motion_loras=tuple(parse_lora(x, flag="--motion-lora") for x in motion_loras),
                models_dir=models_dir, device=device or os.environ.get("LCMVIDEO_DEVICE") or None, dtype=dtype,
                vae=vae, embeddings=tuple(embeddings), clip_skip=clip_skip, sampler=sampler, gamma=gamma)


@cli.command(context_settings=CONTEXT)
@click.argument("schedule_files", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output: .mp4, .gif, or a folder for PNG frames (a folder for several jobs).  "
                   "[default: SCHEDULE_FILE's name + .mp4]")
@click.option("--watch", is_flag=True, help="Keep the models loaded and render again each time the file is saved.")
@click.option("--max-renders", type=click.IntRange(min=1), help="With --watch: stop after this many renders.")
@click.option("--seeds", metavar="LIST", help="Render each file once per seed: e.g. 1-16 or 3,7,9.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run a batch on this many local devices (GPUs; on CPU, processes sharing the cores).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run a batch on a Ray cluster (ADDRESS, or a local Ray when empty); needs lcmvideo[ray].")
@click.option("-f", "--format", "fmt", type=click.Choice(["mp4", "gif", "png"]), help="Override the extension.")
@click.option("-p", "--prompt", help="The prompt (replaces the file's prompts).")
@click.option("-n", "--negative-prompt", help="Negative prompt (used when guidance > 1).")
@click.option("--frames", type=click.IntRange(min=1), help="Clip length in frames.  [default: 16]")
@click.option("-W", "--width", type=click.IntRange(min=8), help="Width in pixels, multiple of 8.  [default: model's]")
@click.option("-H", "--height", type=click.IntRange(min=8), help="Height in pixels, multiple of 8.")
@click.option("--fps", type=click.FloatRange(min=0.1, max=240), help="Frames per second.  [default: 8]")
@click.option("--steps", type=click.IntRange(min=1, max=100), help="LCM steps, 2-8 useful.  [default: 4]")
@click.option("--guidance", type=click.FloatRange(min=0), help="CFG scale; <= 1 disables CFG.  [default: 1.0]")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed.  [default: random, printed]")
@click.option("--shared-noise", type=click.FloatRange(0, 1),
              help="Share of the noise all frames have in common (steadier layout, less motion).  "
                   "[default: the motion module's, 0 for most]")
@motion_scale_option
@click.option("--controlnet", "controlnets", nargs=2, multiple=True, metavar="MODEL SOURCE",
              help="A ControlNet and its conditioning: a folder of numbered images or OpenPose JSON, an image, "
                   "or a video; MODEL 'embedded' with the embedded base. OpenPose JSON in pixels without a canvas "
                   "size: FOLDER@WIDTHxHEIGHT or FOLDER@VIDEO (the video the poses came from). Repeatable; "
                   "replaces the file's.")
@click.option("--controlnet-scale", type=click.FloatRange(min=0, max=5),
              help="Scale of all ControlNets (travels per keyframe as controlnet_scale).  [default: 1.0]")
@click.option("--context-length", type=click.IntRange(min=2, max=64),
              help="Frames per motion window for long clips.  [default: 16]")
@click.option("--context-overlap", type=click.IntRange(min=0, max=63),
              help="Frames shared by neighbouring windows.  [default: 4]")
@ip_options
@click.option("--init-image", type=click.Path(dir_okay=False, path_type=Path), metavar="IMAGE",
              help="Start the clip from a picture (img2vid): frame 0 looks like it, motion grows from it.")
@click.option("--init-strength", type=click.FloatRange(0, 1),
              help="How strongly the picture holds in the starting latents: 0 = not at all, 1 = every frame "
                   "starts from it.  [default: 0.7; 0 with --sparsectrl]")
@click.option("--init-fit", type=click.Choice(["crop", "pad", "stretch"]),
              help="How the picture is fitted to the clip's size.  [default: crop]")
@click.option("--sparsectrl", metavar="PATH|NAME",
              help="SparseCtrl RGB (AnimateDiff v3's v3_sd15_sparsectrl_rgb.ckpt, or a diffusers "
                   "SparseControlNetModel): the --init-image conditions frame 0 through it. A NAME is looked "
                   "up in --models-dir's models/ControlNet, models/controlnet or models/SparseCtrl.")
@click.option("--sparsectrl-scale", type=click.FloatRange(0, 5),
              help="How strongly SparseCtrl's condition holds; 0 = no SparseCtrl.  [default: 1.0]")
@click.option("--free-init", type=click.IntRange(1, 10), metavar="N",
              help="FreeInit: run the sampler N times, each from the last result's low frequencies "
                   "(steadier layout and motion, N times the work); 1 = off.")
@click.option("--free-init-filter", type=click.Choice(["butterworth", "gaussian", "ideal", "box"]),
              help="FreeInit's low-pass filter.  [default: butterworth]")
@model_options
@click.pass_obj
def render(obj: Ctx, schedule_files, output, watch, max_renders, seeds, workers, ray_address, fmt, prompt, negative_prompt,
           frames, width, height, fps, steps,
           guidance, seed, shared_noise, motion_scale, controlnets, controlnet_scale, context_length, context_overlap,
           ip_adapter, ip_image, ip_encoder, init_image, init_strength, init_fit, sparsectrl, sparsectrl_scale,
           free_init, free_init_filter, **model_kw):
    """Render clips from schedule files (YAML/JSON; animatediff-cli-prompt-travel JSON; a ComfyUI
    workflow .json, or the PNG/MP4 ComfyUI wrote; FizzNodes schedule or A1111 prompt-box .txt;
    folders and globs too) or a --prompt.

    Several files, --seeds, or an older AnimateDiff config's prompt list make a batch: the models
    load once, a bad job fails alone, jobs whose output is already there with the same settings
    are skipped, and -o DIR is made when missing.

    A render's sidecar JSON (OUTPUT.json) is itself a schedule file: `lcmvideo render clip.mp4.json`
    renders the same frames again.

    \b
    Examples:
      lcmvideo render prompts/travel.yaml -o travel.mp4
      lcmvideo render -p "a red circle" --frames 16 --seed 1 -f gif --motion-scale 1.2
      lcmvideo render prompts/ --seeds 1-4 -o renders/ --model dreamshaper_8.safetensors \\
          --motion mm_sd_v15_v2.ckpt --lcm-lora lcm-lora-sdv1-5.safetensors \\
          --motion-lora v2_lora_ZoomIn.ckpt:0.8 --ip-adapter ip-adapter_sd15.bin --ip-image style.png:0.7
    """
    from . import app
    from .pipeline import control

    flags = dict(prompt=prompt, negative_prompt=negative_prompt, frames=frames, width=width, height=height,
                 fps=fps, steps=steps, guidance=guidance, seed=seed, shared_noise=shared_noise,
                 motion_scale=motion_scale, context_length=context_length, context_overlap=context_overlap,
                 controlnet=tuple(control.from_flag(m, src) for m, src in controlnets),
                 controlnet_scale=controlnet_scale, output=str(output) if output else None, format=fmt,
                 ip_adapter=ip_adapter, ip_image=ip_image, ip_encoder=ip_encoder,
                 init_image=str(init_image.expanduser().resolve()) if init_image else None,
                 init_strength=init_strength, init_fit=init_fit, sparsectrl=sparsectrl,
                 sparsectrl_scale=sparsectrl_scale, free_init=free_init, free_init_filter=free_init_filter)
    flags.update(model_flags(**model_kw))
    if not schedule_files and prompt is None:
        raise click.UsageError("give a SCHEDULE_FILE or --prompt")
    if max_renders and not watch:
        raise click.UsageError("--max-renders goes with --watch")
    app.render_command(list(schedule_files), flags, obj.say, quiet=obj.quiet, verbose=obj.verbose, watch=watch,
                       max_renders=max_renders, seeds=seeds, workers=workers, ray=ray_address)


@cli.command(context_settings=CONTEXT)
@click.argument("schedule_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--frames", type=click.IntRange(min=1), help="Clip length in frames (overrides the file).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(schedule_file, frames, as_json):
    """Show the per-frame plan of a schedule: keyframe blends and travelled parameters.

    Loads no model: instant.

    \b
    Examples:
      lcmvideo plan prompts/travel.yaml
      lcmvideo plan prompts/travel.yaml --json --frames 64
    """
    from . import app

    app.plan_command(schedule_file, {"frames": frames}, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the lcmvideo YAML.  [default: stdout]")
@click.option("--clip", type=click.IntRange(min=0), help="Which clip of a file holding several.  [default: 0]")
def convert(source, output, clip):
    """Turn another tool's file into an lcmvideo schedule: animatediff-cli-prompt-travel JSON, a
    ComfyUI workflow (.json, or a PNG/MP4 ComfyUI wrote), FizzNodes schedule or A1111 prompt-box .txt.

    Prints what could not be carried over. `render` and `plan` also read these files directly.
    For an older AnimateDiff config with several prompts, --clip N picks the clip (from 0).

    \b
    Examples:
      lcmvideo convert prompt_travel.json -o travel.yaml
      lcmvideo convert ComfyUI_00001_.png -o workflow.yaml
      lcmvideo convert schedule.txt
    """
    from . import app

    app.convert_command(source, output, click.echo, clip)


@cli.command(context_settings=CONTEXT)
@click.argument("schedule_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@model_options
@click.pass_obj
def models(obj: Ctx, schedule_file, as_json, **model_kw):
    """Show which models a render would use, where they come from, and what is in --models-dir.

    \b
    Examples:
      lcmvideo models
      lcmvideo models prompts/real-models.yaml
      lcmvideo models --models-dir ~/stable-diffusion-webui --json
    """
    from . import app

    app.models_command(schedule_file, model_flags(**model_kw), as_json)


@cli.group(context_settings=CONTEXT)
def pose():
    """OpenPose skeletons for ControlNet.

    \b
    Example:
      lcmvideo pose extract dance.mp4 -o poses/
    """


@pose.command("extract", context_settings=CONTEXT)
@click.argument("video_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for 0000.png skeleton images and 0000.json OpenPose keypoints.")
@click.pass_obj
def pose_extract(obj: Ctx, video_file, output):
    """Extract the pose of a person from a video (needs: pip install 'lcmvideo[pose]').

    \b
    Example:
      lcmvideo pose extract dance.mp4 -o poses/
      lcmvideo render -p "a dancer" --controlnet control_v11p_sd15_openpose.pth poses/ ...
    """
    from .output import video
    from .pipeline import pose as pose_mod

    if not video_file.is_file():
        raise LcmvideoError(f"{video_file}: no such video")
    frames, _ = video.read(video_file)
    n = pose_mod.extract_to_folder(frames, output, quiet=obj.quiet)
    obj.say(f"wrote {n} skeletons to {output}")


@cli.command(context_settings=CONTEXT)
@click.argument("input_video", type=click.Path(path_type=Path))
@click.argument("schedule_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output .mp4/.gif/folder.  [default: INPUT.restyled.mp4]")
@click.option("-f", "--format", "fmt", type=click.Choice(["mp4", "gif", "png"]), help="Override the extension.")
@click.option("-p", "--prompt", help="The prompt (replaces the schedule's prompts).")
@click.option("-n", "--negative-prompt", help="Negative prompt (used when guidance > 1).")
@click.option("--mode", type=click.Choice(["frames", "animatediff"]), default="frames", show_default=True,
              help="Per-frame img2img, or AnimateDiff video-to-video over context windows.")
@click.option("--strength", type=click.FloatRange(0, 1), help="How much to change each frame.  [default: 0.5]")
@click.option("--steps", type=click.IntRange(min=1, max=50), help="LCM steps actually run.  [default: 4]")
@click.option("--guidance", type=click.FloatRange(min=0), help="CFG scale; <= 1 disables CFG.  [default: 1.0]")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed.  [default: random, printed]")
@click.option("--start", metavar="POS", help="Start at a frame (40) or a time (2.5s).")
@click.option("--end", metavar="POS", help="Stop before a frame or a time.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Keep every Nth frame.")
@click.option("--max-frames", type=click.IntRange(min=1), help="At most this many frames.")
@click.option("-W", "--width", type=click.IntRange(min=8), help="Width (multiple of 8).  [default: the shorter "
                                                                 "side at the model's size, aspect kept]")
@click.option("-H", "--height", type=click.IntRange(min=8), help="Height (multiple of 8).")
@click.option("--fit", type=click.Choice(["crop", "pad", "stretch"]), default="crop", show_default=True,
              help="How the input meets the output size.")
@click.option("--fps", type=click.FloatRange(min=0.1, max=240), help="Output fps.  [default: the input's / --every]")
@click.option("--blend", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="frames mode: share of the previous output blended into each frame's start.")
@click.option("--blend-space", type=click.Choice(["latent", "pixel"]), default="latent", show_default=True)
@click.option("--no-flow", is_flag=True, help="Blend the previous output without warping it along the motion.")
@click.option("--fresh-noise", is_flag=True, help="New noise for every frame (more flicker; for comparison).")
@click.option("--shared-noise", type=click.FloatRange(0, 1),
              help="animatediff mode: share of the noise all frames have in common.  [default: the motion module's]")
@lambda f: motion_scale_option(f, " With --mode animatediff.")
@click.option("--controlnet", "controlnets", nargs=2, multiple=True, metavar="MODEL SOURCE",
              help="ControlNet and its images (folder, image, video); SOURCE 'openpose' (needs lcmvideo[pose]), "
                   "'canny' or 'position' (the shapes world's blob) = that map of each input frame. Repeatable.")
@click.option("--no-audio", is_flag=True, help="Leave the input's audio out of the MP4.")
@click.option("--resume", is_flag=True, help="Continue an interrupted restyle of the same output.")
@click.option("--restart", is_flag=True, help="Discard an interrupted restyle's work and start over.")
@click.option("--no-report", is_flag=True, help="Skip the flicker measurement.")
@lambda f: ip_options(f, " With --mode animatediff.")
@model_options
@click.pass_obj
def restyle(obj: Ctx, input_video, schedule_file, output, fmt, prompt, negative_prompt, mode, strength, steps,
            guidance, seed, start, end, every, max_frames, width, height, fit, fps, blend, blend_space, no_flow,
            fresh_noise, shared_noise, motion_scale, controlnets, no_audio, resume, restart, no_report, ip_adapter,
            ip_image, ip_encoder, **model_kw):
    """Restyle a video (MP4, MOV, WebM, GIF or a folder of frames) with a --prompt or a schedule
    whose prompts and strength travel over the input's frames.

    Prints and records the flicker (warping error) of the output next to the input's own.

    \b
    Examples:
      lcmvideo restyle in.mp4 -p "a blue circle" --strength 0.6 -o out.mp4
      lcmvideo restyle in.mp4 style.yaml --mode animatediff --start 2s --end 6s
      lcmvideo restyle in.mp4 -p "a dancer, oil painting" --controlnet control_v11p_sd15_openpose.pth openpose
    """
    from .api import Session
    from .errors import usage
    from .pipeline import control
    from .pipeline import restyle as rs
    from .schedule import INPUT, ControlSpec

    if schedule_file is None and prompt is None:
        raise click.UsageError("give a SCHEDULE_FILE or --prompt")
    if resume and restart:
        raise click.UsageError("--resume and --restart exclude each other")
    if shared_noise is not None and mode != "animatediff":
        raise click.UsageError("--shared-noise goes with --mode animatediff (frames mode has --fresh-noise)")
    if motion_scale is not None and mode != "animatediff":
        raise usage(f"--motion-scale {motion_scale:g}: goes with --mode animatediff (frames mode runs the image "
                    "UNet, without the motion modules)")
    if not input_video.exists():
        raise click.BadParameter(f"{input_video}: no such file or folder", param_hint="INPUT_VIDEO")
    specs = []
    for m, src in controlnets:
        if src.lower() in INPUT_ANNOTATORS:
            specs.append(ControlSpec(model=None if m.lower() in ("embedded", "default") else m,
                                     **{INPUT_ANNOTATORS[src.lower()]: INPUT}))
        else:
            specs.append(control.from_flag(m, src))
    opts = rs.Options(mode=mode, start=start, end=end, every=every, max_frames=max_frames, fit=fit, blend=blend,
                      blend_space=blend_space, flow=not no_flow, fixed_noise=not fresh_noise, audio=not no_audio,
                      resume=resume, restart=restart, report=not no_report)
    flags = {k: v for k, v in model_flags(**model_kw).items() if v not in (None, ())}
    given = dict(prompt=prompt, negative_prompt=negative_prompt, strength=strength, steps=steps, guidance=guidance, seed=seed,
                 shared_noise=shared_noise, motion_scale=motion_scale, width=width, height=height, fps=fps,
                 controlnet=tuple(specs), format=fmt,
                 ip_adapter=ip_adapter, ip_image=ip_image, ip_encoder=ip_encoder)
    overrides = {k: v for k, v in given.items() if v not in (None, ())}
    session = Session(quiet=obj.quiet, verbose=obj.verbose, say=obj.say, **flags)
    session.restyle_to_file(input_video, output, schedule_file, opts, **overrides)


@cli.command(context_settings=CONTEXT)
@click.argument("video_file", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path),
              help="The source the video was made from: its motion is the one to follow.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def flicker(video_file, reference, as_json):
    """Measure flicker: warping error (lower is steadier) and plain frame difference.

    \b
    Examples:
      lcmvideo flicker out.mp4
      lcmvideo flicker out.mp4 --reference in.mp4 --json
    """
    import json

    from .errors import usage
    from .output import flow, video

    frames, _ = video.read(video_file)
    ref = None
    if reference is not None:
        ref, _ = video.read(reference)
        if ref.shape[1:3] != frames.shape[1:3]:
            import numpy as np

            from .output.images import fit

            ref = np.stack([fit(f, frames.shape[2], frames.shape[1]) for f in ref])
        if len(ref) != len(frames):
            raise usage(f"--reference: {reference} has {len(ref)} frames, {video_file} has {len(frames)}")
    r = flow.report(frames, ref)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"warping error     {r['warping_error']:.5f}")
    click.echo(f"frame difference  {r['frame_difference']:.5f}")
    if ref is not None:
        click.echo(f"reference warping error     {r['source_warping_error']:.5f}")
        click.echo(f"reference frame difference  {r['source_frame_difference']:.5f}")


@cli.command(context_settings=CONTEXT)
@click.argument("schedule_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--camera", metavar="INDEX|DEVICE", help="Camera index or device path.  [default: 0]")
@click.option("--source", metavar="FILE|synthetic", help="A video file played in real time, or 'synthetic'.")
@click.option("--loop", is_flag=True, help="Play --source FILE again when it ends.")
@click.option("-p", "--prompt", "prompts", multiple=True, help="Prompt; repeat to cycle with the p key.")
@click.option("--strength", type=click.FloatRange(0.05, 1), default=0.5, show_default=True)
@click.option("--steps", type=click.IntRange(1, 8), default=2, show_default=True, help="LCM steps actually run.")
@click.option("--guidance", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("-W", "--width", type=click.IntRange(min=8), help="Width (multiple of 8).  [default: model's]")
@click.option("-H", "--height", type=click.IntRange(min=8), help="Height (multiple of 8).  [default: model's]")
@click.option("--fit", type=click.Choice(["crop", "pad", "stretch"]), default="crop", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Record to this MP4.")
@click.option("--fps", type=click.FloatRange(min=1, max=240), help="Recording fps.  [default: the source's]")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many output frames.")
@click.option("--duration", type=click.FloatRange(min=0.1), help="Stop after this many seconds.")
@click.option("--similarity-threshold", type=click.FloatRange(0, 1),
              help="Skip frames whose cosine similarity to the last processed one exceeds this (e.g. 0.98).")
@click.option("--no-window", is_flag=True, help="Never open a window (record and log instead).")
@click.option("--virtual-cam", is_flag=True, help="Also send frames to a virtual camera (lcmvideo[virtualcam]).")
@click.option("--controlnet", "controlnet", metavar="MODEL",
              help="A ControlNet ('embedded' for the embedded one) conditioned on a map of each frame (--control-map).")
@click.option("--control-map", type=click.Choice(list(INPUT_ANNOTATORS)),
              help="--controlnet's map: the pose (lcmvideo[pose]), Canny edges, or the shapes world's blob. "
                   "[default: openpose]")
@click.option("--stream-batch", is_flag=True,
              help="StreamDiffusion's denoising batch: successive frames at different steps in one UNet call "
                   "(more fps where the UNet has room, e.g. a GPU; output lags steps - 1 frames).")
@click.option("--serve", is_flag=True,
              help="Serve a page instead of a window: the browser's camera (or --camera/--source, watched) is "
                   "stylized, with controls for prompt, strength, steps, seed, similarity, record and snapshot.")
@click.option("--host", metavar="ADDRESS",
              help="--serve on this address; any but 127.0.0.1/localhost/::1 needs the token in the URL printed.  "
                   "[default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(0, 65535), help="--serve on this port (0: any free one).  [default: 8765]")
@click.option("--token", metavar="TEXT", help="--serve: require this token (16+ of A-Z a-z 0-9 _ -), also on 127.0.0.1.  "
                                              "[default: a random one off the loopback]")
@click.option("--open", "open_browser", is_flag=True, help="--serve: open the page in this machine's browser.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="--serve over https with this certificate (browsers give the camera only to https or localhost).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), metavar="FILE", help="--tls-cert's private key.")
@model_options
@click.pass_obj
def live(obj: Ctx, schedule_file, camera, source, loop, prompts, strength, steps, guidance, seed, width, height, fit,
         out, fps, max_frames, duration, similarity_threshold, no_window, virtual_cam, controlnet, control_map,
         stream_batch, serve, host, port, token, open_browser, tls_cert, tls_key, **model_kw):
    """Stylize a camera (or a video, or a synthetic source) in real time.

    A window opens where there is a display (tkinter; without it, the page below in the browser).
    Keys in the window: q/Esc quit, space pause, s snapshot, p next prompt. Without a display
    the result is recorded (default live.mp4) and fps is logged. Ctrl-C stops cleanly.

    --serve serves a page (http://127.0.0.1:8765/ by default): the browser's camera goes to the
    model over a WebSocket and the stylized frames come back; the newest frame wins, nothing
    queues. For a remote GPU, tunnel the port (ssh -L 8765:127.0.0.1:8765 gpu-box) or bind
    --host 0.0.0.0 with https (--tls-cert/--tls-key) and open the URL with its token.

    \b
    Examples:
      lcmvideo live -p "a blue circle" -p "a green square"
      lcmvideo live --serve -p "an oil painting" --stream-batch
      lcmvideo live --source synthetic -p "a blue circle" --no-window --max-frames 100
    """
    from . import app

    if camera is not None and source is not None:
        raise click.UsageError("--camera and --source exclude each other")
    if control_map and not controlnet:
        raise click.UsageError("--control-map goes with --controlnet MODEL")
    given = [name for name, v in (("--host", host), ("--port", port), ("--token", token), ("--open", open_browser),
                                  ("--tls-cert", tls_cert), ("--tls-key", tls_key)) if v not in (None, False)]
    if given and not serve:
        raise click.UsageError(f"{given[0]} goes with --serve")
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    flags = {k: v for k, v in model_flags(**model_kw).items() if v not in (None, ())}
    app.live_command(schedule_file, flags, dict(
        camera=camera, source=source, loop=loop, prompts=list(prompts), strength=strength, steps=steps,
        guidance=guidance, seed=seed, width=width, height=height, fit=fit, out=out, fps=fps, max_frames=max_frames,
        duration=duration, similarity=similarity_threshold, window=not no_window, virtual_cam=virtual_cam,
        controlnet=controlnet, control_map=INPUT_ANNOTATORS[control_map or "openpose"], stream_batch=stream_batch,
        serve=serve, host=host or "127.0.0.1", port=8765 if port is None else port, token=token,
        open_browser=open_browser, tls=(tls_cert, tls_key) if tls_cert else None),
        say=obj.say, quiet=obj.quiet, verbose=obj.verbose)


def main(argv=None):
    """Console entry point."""
    cli.main(args=argv, prog_name="lcmvideo")


if __name__ == "__main__":
    main()
