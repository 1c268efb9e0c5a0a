"""lcmvideo's render against a plain diffusers script on the same components, in one process.

Both sides render the same clip (same weights, LoRA fused, frames, size, steps, seed);
repetitions alternate so drift hits both alike. Prints the median wall-time ratio
lcmvideo / plain diffusers and the share of lcmvideo's wall time spent outside the UNet,
VAE and text encoder (Python, scheduler, tensor shuffling). Targets: ratio <= 1.0,
outside share <= 5 %.

    python benchmarks/render_overhead.py                       # embedded family, CPU
    python benchmarks/render_overhead.py --quick               # a smoke check (seconds)
    python benchmarks/render_overhead.py --full-size --device cuda --dtype float16 \\
        --size 512 --frames 16 --steps 4                       # SD1.5 architecture, random weights
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def full_size_family(out: Path) -> Path:
    """SD1.5-sized UNet/VAE/text encoder + AnimateDiff v2-sized adapter, random weights (timing only)."""
    import json

    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lcmvideo.models import embedded
    from lcmvideo.models.loader import SD15_CONFIG
    from lcmvideo.models.tokenizer import tokenizer_dir

    if (out / "done").exists():
        return out
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(json.loads((SD15_CONFIG / "unet/config.json").read_text())).save_pretrained(
        out / "unet")
    AutoencoderKL.from_config(json.loads((SD15_CONFIG / "vae/config.json").read_text())).save_pretrained(out / "vae")
    CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG / "text_encoder")).save_pretrained(out / "text_encoder")
    MotionAdapter().save_pretrained(out / "motion_adapter")  # defaults = mm_sd_v15_v2
    import shutil

    shutil.copytree(tokenizer_dir(), out / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(SD15_CONFIG / "scheduler", out / "scheduler", dirs_exist_ok=True)
    (out / "model_index.json").write_text((embedded.ensure() / "model_index.json").read_text())
    (out / "done").write_text("1")
    return out


class ModelClock:
    """Accumulates wall time inside the UNet, VAE decoder and text encoder forwards."""

    def __init__(self, pipe, device):
        import torch

        self.total = 0.0
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.register_forward_pre_hook(self._start)
            module.register_forward_hook(self._stop)
        self._decode = pipe.vae.decode
        clock = self

        def timed_decode(*a, **k):
            clock._start()
            try:
                return clock._decode(*a, **k)
            finally:
                clock._stop()

        pipe.vae.decode = timed_decode

    def _start(self, *a):
        self.sync()
        self.t = time.perf_counter()

    def _stop(self, *a):
        self.sync()
        self.total += time.perf_counter() - self.t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=None, help="pixels; default: the model's native size")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--full-size", action="store_true", help="SD1.5-sized random-weight models instead of tiny")
    ap.add_argument("--quick", action="store_true", help="one short repetition: a smoke check, not a measurement")
    args = ap.parse_args()

    import torch
    from diffusers import AnimateDiffPipeline, LCMScheduler, MotionAdapter

    from lcmvideo import models
    from lcmvideo.models import embedded
    from lcmvideo.models.tokenizer import load_tokenizer
    from lcmvideo.pipeline import text2video
    from lcmvideo.schedule import ModelPaths, Settings

    if args.quick:
        args.frames, args.reps = 4, 1
    base = full_size_family(Path(tempfile.gettempdir()) / "lcmvideo-bench-sd15") if args.full_size else embedded.ensure()
    mp = ModelPaths(base=str(base), motion=str(base / "motion_adapter"),
                    lcm_lora="none" if args.full_size else str(base / "lcm_lora"),
                    device=args.device, dtype=args.dtype)
    spec = models.resolve(mp)
    ours = models.load(spec)
    size = args.size or ours.native_size
    dtype = ours.pipe.unet.dtype

    # the plain diffusers way, on the same files
    t0 = time.perf_counter()
    adapter = MotionAdapter.from_pretrained(base / "motion_adapter", torch_dtype=dtype)
    # the shipped family keeps its tokenizer in the package (lcmvideo/data/clip), not in its folder
    plain = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter, torch_dtype=dtype, tokenizer=load_tokenizer(),
                                                safety_checker=None, feature_extractor=None)
    plain.scheduler = LCMScheduler.from_config(plain.scheduler.config)  # the folder's own, as diffusers' docs do
    if not args.full_size:
        plain.load_lora_weights(str(base / "lcm_lora"), adapter_name="lcm")
        plain.fuse_lora()
        plain.unload_lora_weights()
    plain.to(spec.device)
    plain.set_progress_bar_config(disable=True)
    plain_load = time.perf_counter() - t0

    def run_ours():
        s = Settings(keyframes={0: "a red circle moving right"}, frames=args.frames, width=size, height=size,
                     steps=args.steps, guidance=1.0, seed=1)
        return text2video.render(ours, s, quiet=True)

    def run_plain():
        out = plain(prompt="a red circle moving right", num_frames=args.frames, width=size, height=size,
                    num_inference_steps=args.steps, guidance_scale=1.0,
                    generator=torch.Generator("cpu").manual_seed(1), output_type="np")
        return out.frames[0]

    a, b = run_ours(), run_plain()  # warm-up, and the same clip on both sides
    diff = abs(a.astype(float) - (b * 255).round()).max()
    clock = ModelClock(ours.pipe, spec.device)
    sync = torch.cuda.synchronize if spec.device.startswith("cuda") else (lambda: None)
    t_ours, t_plain, inside = [], [], []
    for _ in range(args.reps):
        clock.total = 0.0
        sync()
        t = time.perf_counter()
        run_ours()
        sync()
        t_ours.append(time.perf_counter() - t)
        inside.append(clock.total)
        t = time.perf_counter()
        run_plain()
        sync()
        t_plain.append(time.perf_counter() - t)

    med_o, med_p = statistics.median(t_ours), statistics.median(t_plain)
    outside = statistics.median([1 - i / t for i, t in zip(inside, t_ours)])
    dev = torch.cuda.get_device_name() if spec.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"device: {dev}; models: {'SD1.5-size random' if args.full_size else 'embedded tiny'} ({spec.dtype}); "
          f"{args.frames} frames {size}x{size}, {args.steps} steps, {args.reps} reps")
    print(f"frames identical to plain diffusers: max abs diff {diff:.0f}/255")
    print(f"lcmvideo render  median {med_o:.3f}s  (min {min(t_ours):.3f})")
    print(f"plain diffusers  median {med_p:.3f}s  (min {min(t_plain):.3f})   plain load {plain_load:.2f}s")
    print(f"ratio lcmvideo/plain: {med_o / med_p:.3f}   (target <= 1.0)")
    print(f"share of lcmvideo wall time outside UNet+VAE+text encoder: {100 * outside:.1f} %   (target <= 5 %)")
    print(f"seconds per clip (lcmvideo): {med_o:.2f}")


if __name__ == "__main__":
    main()
