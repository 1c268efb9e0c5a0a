"""Restyle throughput against a plain diffusers img2img loop, and flicker with and without the cures.

One process, same components, same settings (steps actually run, strength, seed):
  plain      read the video, StableDiffusionImg2ImgPipeline per frame (prompt per call), write MP4
  frames     lcmvideo restyle --mode frames (work folder, resumable), written MP4 + sidecar
  animatediff lcmvideo restyle --mode animatediff
Prints frames per second and the ratio of each lcmvideo mode's wall time to plain (target <= 1.0),
then the warping error (Lai et al. 2018) of the output for: fresh noise per frame (plain),
fixed noise (lcmvideo's default), fixed noise + flow-warped latent blending, animatediff.

    python benchmarks/restyle.py [--frames 32] [--steps 4] [--strength 0.6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def source(path: Path, frames: int):
    from lcmvideo.output import video
    from lcmvideo.shapes import world

    clip = world.clip(world.Scene("circle", "red", "black", 12, 32, 9, "moving right", 36 / frames), frames)
    video.write(clip, path, 8.0, "mp4")
    return path


def plain(models, src: Path, out: Path, prompt: str, steps: int, strength: float, seed: int):
    import imageio.v2 as iio
    import numpy as np
    import torch
    from PIL import Image

    from lcmvideo.output import video
    from lcmvideo.pipeline import img2img

    frames, fps = video.read(src)
    pipe = img2img.img2img_pipeline(models)
    n = img2img.schedule_length(pipe.scheduler, steps, strength)
    strength = min(1.0, steps / n + 1e-6)  # the pipeline runs int(n * strength) steps: make that `steps`
    outs = []
    for f in frames:
        img = pipe(prompt=prompt, image=Image.fromarray(f), strength=strength, num_inference_steps=n,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(seed + len(outs)),
                   output_type="np").images[0]
        outs.append((img * 255).round().astype(np.uint8))
    iio.mimwrite(out, outs, fps=fps, macro_block_size=1)
    return np.stack(outs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    a = ap.parse_args()
    if a.quick:
        a.frames, a.steps, a.repeats = 4, 1, 1

    from lcmvideo.api import Session
    from lcmvideo.models import embedded
    from lcmvideo.output import flow, video
    from lcmvideo.pipeline import restyle

    tmp = Path(tempfile.mkdtemp())
    src = source(tmp / "src.mp4", a.frames)
    session = Session()
    prompt, seed = "a blue circle on a black background", 7
    kw = dict(prompt=prompt, steps=a.steps, strength=a.strength, seed=seed)
    models = session.models(session.settings(**kw))
    reference = video.read(src)[0]

    def ours(mode, **opts):
        out = tmp / f"{mode}.mp4"
        session.restyle_to_file(src, out, options=restyle.Options(mode=mode, report=False, **opts), **kw)
        return video.read(out)[0]

    times = {"plain": [], "frames": [], "animatediff": []}
    results = {}
    for _ in range(a.repeats):  # alternate, so drift hits every side alike
        for name in times:
            t0 = time.perf_counter()
            if name == "plain":
                results[name] = plain(models, src, tmp / "plain.mp4", prompt, a.steps, a.strength, seed)
            else:
                results[name] = ours(name)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.frames} frames 64x64, {a.steps} steps at strength {a.strength}, embedded family {embedded.version()}, CPU\n")
    print(f"{'run':<14}{'s':>8}{'fps':>8}{'ratio':>8}")
    for k, v in med.items():
        print(f"{k:<14}{v:>8.2f}{a.frames / v:>8.1f}{v / med['plain']:>8.2f}")
    blended = ours("frames", blend=0.4)
    print("\nwarping error (lower = steadier; input itself: "
          f"{flow.warping_error(reference):.4f})")
    for name, frames in (("fresh noise per frame (plain loop)", results["plain"]),
                         ("fixed noise (default)", results["frames"]),
                         ("fixed noise + warped latent blend 0.4", blended),
                         ("animatediff", results["animatediff"])):
        print(f"  {name:<40}{flow.warping_error(frames, reference):.4f}")


if __name__ == "__main__":
    main()
