"""Live mode against a plain sequential loop and a StreamDiffusion-style loop, same model and settings.

  plain          read -> diffusers StableDiffusionImg2ImgPipeline (prompt per call) -> write, in turn
  streamdiff     prompt embeddings cached, one fixed noise tensor, components called directly,
                 no queue (read -> encode -> LCM steps -> decode -> write, in turn)
  lcmvideo       live.run: capture / inference / recording on threads, newest frame wins
All read the same synthetic camera (30 fps: read() returns the next frame when it is due) and
write an MP4. Prints output
fps and median/p95 latency (frame read to frame written) and the fps ratios. Target: lcmvideo
fps >= both.

    python benchmarks/live.py [--frames 60] [--steps 2] [--size 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def writer(path: Path, size: int):
    import imageio_ffmpeg

    w = imageio_ffmpeg.write_frames(str(path), (size, size), fps=8, codec="libx264", pix_fmt_out="yuv420p",
                                    macro_block_size=2, ffmpeg_log_level="error")
    w.send(None)
    return w


def plain(models, src, n, size, prompt, steps, strength, out):
    import torch
    from PIL import Image

    from lcmvideo.pipeline import img2img

    pipe = img2img.img2img_pipeline(models)
    total = img2img.schedule_length(pipe.scheduler, steps, strength)
    strength = min(1.0, steps / total + 1e-6)  # the pipeline runs int(total * strength) steps: make that `steps`
    w, lat, t0 = writer(out, size), [], time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        f = src.read()
        img = pipe(prompt=prompt, image=Image.fromarray(f), strength=strength, num_inference_steps=total,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        w.send(np.ascontiguousarray((img * 255).round().astype(np.uint8)))
        lat.append(1000 * (time.perf_counter() - t))
    w.close()
    return n / (time.perf_counter() - t0), lat


def streamdiff(models, src, n, size, prompt, steps, strength, out):
    """The StreamDiffusion recipe without its TensorRT/batching: everything per-clip precomputed."""
    import torch

    from lcmvideo.pipeline import img2img
    from lcmvideo.pipeline import text as prompts

    p = models.pipe
    unet, vae, sched = img2img.unet2d(models), p.vae, type(p.scheduler).from_config(p.scheduler.config)
    sched.set_timesteps(img2img.schedule_length(sched, steps, strength))
    ts = sched.timesteps[-steps:]
    with torch.inference_mode():
        emb = prompts.encode(p.text_encoder, p.tokenizer, prompt)
    noise = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0))
    sf = vae.config.scaling_factor
    w, lat, t0 = writer(out, size), [], time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            t = time.perf_counter()
            f = src.read()
            x = torch.from_numpy(f).permute(2, 0, 1)[None].float() / 127.5 - 1
            z = sched.add_noise(vae.encode(x).latent_dist.mean * sf, noise, ts[:1])
            sched.set_timesteps(len(sched.timesteps))
            for k in ts:
                z = sched.step(unet(z, k, encoder_hidden_states=emb).sample, k, z).prev_sample
            img = vae.decode(z / sf).sample
            w.send(np.ascontiguousarray(((img[0] / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()))
            lat.append(1000 * (time.perf_counter() - t))
    w.close()
    return n / (time.perf_counter() - t0), lat


def ours(models, src, n, size, prompt, steps, strength, out):
    from lcmvideo import live
    from lcmvideo.pipeline import img2img

    sty = img2img.Stylizer(models, steps=steps, seed=0)
    s = live.run(sty, src, live.Options(prompts=[prompt], strength=strength, width=size, height=size, out=out,
                                        fps=8, max_frames=n, window=False), say=lambda m: None)
    return s.fps, s.latencies_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--camera-fps", type=float, default=30.0, help="rate of the synthetic camera")
    a = ap.parse_args()

    from lcmvideo import live
    from lcmvideo.api import Session
    from lcmvideo.models import embedded

    session = Session()
    models = session.models(session.settings(prompt="x"))
    tmp = Path(tempfile.mkdtemp())
    prompt = "a blue circle on a black background"
    runs = {"plain": plain, "streamdiff": streamdiff, "lcmvideo": ours}
    fps, lat = {k: [] for k in runs}, {k: [] for k in runs}
    for _ in range(a.repeats):  # alternate, so drift hits every loop alike
        for name, fn in runs.items():
            src = live.Synthetic(fps=a.camera_fps, size=a.size)  # a camera faster than inference
            f, lt = fn(models, src, a.frames, a.size, prompt, a.steps, a.strength, tmp / f"{name}.mp4")
            fps[name].append(f)
            lat[name] += lt
    print(f"{a.frames} frames {a.size}x{a.size}, {a.steps} LCM steps at strength {a.strength}, "
          f"embedded family {embedded.version()}, CPU\n")
    print(f"{'loop':<12}{'fps':>8}{'median ms':>11}{'p95 ms':>9}{'fps ratio':>11}")
    best = {k: statistics.median(v) for k, v in fps.items()}
    for k in runs:
        print(f"{k:<12}{best[k]:>8.1f}{np.median(lat[k]):>11.0f}{np.percentile(lat[k], 95):>9.0f}"
              f"{best['lcmvideo'] / best[k]:>11.2f}")
    print("\nfps ratio = lcmvideo fps / that loop's fps (>= 1: lcmvideo is at least as fast)")


if __name__ == "__main__":
    main()
