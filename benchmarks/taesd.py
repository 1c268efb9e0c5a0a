"""TAESD against the full VAE: decode seconds per frame, and how far the frames differ.

- 64x64, the shipped shapes family: its VAE against TAESD's architecture (diffusers'
  AutoencoderTiny, default config). No TAESD exists for this family, so one is distilled here:
  the tiny decoder learns the shapes VAE's own decoding of shapes-world pictures' and LCM
  renders' latents (--train-steps steps, cached), then both decode the latents of other LCM
  renders (every colour x shape, 16 frames each, seeds not trained on); reported: mean and
  99th-percentile absolute pixel difference, and the analyser's agreement (same colour,
  centroid within 6 px) between the two decodings.
- 512x512, full size, random weights: SD1.5's AutoencoderKL (lcmvideo/data/sd15/vae/config.json)
  against AutoencoderTiny with TAESD's default config, decoding the same latents one frame per
  call (what lcmvideo's decode does at 512x512). Random-weight frames mean nothing, so only
  time is reported there.

Both through lcmvideo's own decode (pipeline/decode.py), which takes either VAE.

    python benchmarks/taesd.py [--train-steps 1000] [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # training/shapes


def per_frame(decode, latents, reps: int) -> float:
    """Median seconds per frame of decode(latents) over `reps` runs (after one warm-up)."""
    import torch

    with torch.inference_mode():
        decode(latents[:1])
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            decode(latents)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / latents.shape[0]


def world_latents(vae, n: int, seed: int):
    """(scaled latents, the VAE's decoding of them) of n random shapes-world pictures."""
    import torch

    from lcmvideo.pipeline.decode import encode
    from lcmvideo.shapes import world

    rng = np.random.default_rng(seed)
    pics = np.stack([world.draw(world.sample(rng)) for _ in range(n)])
    x = torch.from_numpy(pics).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        z = encode(vae, x)
        target = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    return z, target


def distil(models, steps: int, cache: Path):
    """An AutoencoderTiny whose decoder imitates the family's VAE (cached by steps): on the latents of
    shapes-world pictures and of LCM renders of random captions (other seeds than the measured ones;
    generated latents are wider than encoded ones, std 1.5 against 1.0)."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file, save_file

    from lcmvideo.shapes import world

    vae = models.pipe.vae
    torch.manual_seed(0)
    tiny = AutoencoderTiny()
    if cache.exists():
        tiny.load_state_dict(load_file(str(cache)))
        return tiny.eval()
    rng = np.random.default_rng(7)
    captions = [(world.caption(world.sample(rng), rng), None, 100_000 + i) for i in range(min(160, steps))]
    pool = render_latents(models, captions, 8)
    with torch.inference_mode():
        pool_target = vae.decode(pool / vae.config.scaling_factor).sample.clamp(-1, 1)
    pool, pool_target = pool.clone(), pool_target.clone()
    opt = torch.optim.Adam(tiny.decoder.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        z, target = world_latents(vae, 8, seed=step)
        pick = torch.randint(len(pool), (8,), generator=g)
        z, target = torch.cat([z, pool[pick]]), torch.cat([target, pool_target[pick]])
        out = tiny.decoder(z)
        loss = (out - target).abs().mean() + ((out - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"  distil step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(cache))
    return tiny.eval()


def render_latents(models, cases, frames: int):
    """The latents of LCM renders, one clip per (prompt, colour, seed), as (N, 4, 8, 8)."""
    import torch

    from lcmvideo.pipeline import text2video
    from lcmvideo.pipeline.text import conditioning
    from lcmvideo.schedule import Settings, plan

    out = []
    with torch.inference_mode():
        for prompt, _, seed in cases:
            s = text2video.resolve_settings(Settings(keyframes={"0": prompt}, frames=frames, steps=4, seed=seed),
                                            models)
            rows = plan(s)
            cond, uncond, guidance = conditioning(models, s, rows)
            lat = text2video.denoise(models, cond, uncond, guidance, s, rows=rows)
            out.append(lat[0].permute(1, 0, 2, 3))
    return torch.cat(out)


def shapes(args):
    import torch

    from lcmvideo.api import Session
    from lcmvideo.models import embedded
    from lcmvideo.paths import cache_dir
    from lcmvideo.pipeline.decode import decode_frames
    from training.shapes import quality

    if not embedded.use_shipped():
        raise SystemExit("the shapes weights are not shipped in this checkout")
    session = Session()
    models = session.models(session.settings(prompt="x"))
    vae = models.pipe.vae
    steps = 5 if args.quick else args.train_steps
    print(f"\n64x64, the shapes family: distilling a TAESD-architecture decoder for {steps} steps")
    tiny = distil(models, steps, cache_dir() / f"taesd-shapes-{embedded.version()}-{steps}-v2.safetensors")
    cases = quality.prompts_and_truth(1)[:3 if args.quick else None]
    lat = render_latents(models, cases, 16)
    chunk = 8  # decode.chunk_for(64, 64)

    def by_chunks(v):
        return lambda z: np.concatenate([decode_frames(v, z[i:i + chunk]) for i in range(0, len(z), chunk)])

    t_vae, t_tiny = per_frame(by_chunks(vae), lat, args.reps), per_frame(by_chunks(tiny), lat, args.reps)
    with torch.inference_mode():
        a, b = by_chunks(vae)(lat), by_chunks(tiny)(lat)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    truth = [c for _, c, _ in cases for _ in range(16)]
    print(f"{len(lat)} frames of {len(cases)} LCM renders (4 steps), {chunk} frames per decode call")
    print(f"{'decoder':<28}{'ms/frame':>10}{'ratio':>8}{'colour':>9}")
    print(f"{'shapes VAE (AutoencoderKL)':<28}{t_vae * 1e3:>10.2f}{1:>8.2f}{quality.colour_rate(a, truth):>9.0%}")
    print(f"{'distilled TAESD':<28}{t_tiny * 1e3:>10.2f}{t_tiny / t_vae:>8.2f}{quality.colour_rate(b, truth):>9.0%}")
    print(f"difference: mean {diff.mean():.2f}/255, 99th percentile {np.percentile(diff, 99):.0f}/255; same colour "
          f"and place (6 px) in {quality.agreement(a, b):.0%} of frames")


def full_size(args):
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from lcmvideo.paths import DATA
    from lcmvideo.pipeline.decode import chunk_for, decode_frames

    size = 128 if args.quick else 512
    print(f"\n{size}x{size}, full size, random weights ({torch.get_num_threads()} threads)")
    torch.manual_seed(0)
    kl = AutoencoderKL.from_config(AutoencoderKL.load_config(DATA / "sd15" / "vae")).eval()
    tiny = AutoencoderTiny().eval()
    lat = torch.randn(1 if args.quick else 4, 4, size // 8, size // 8)
    chunk = chunk_for(size, size)

    def by_chunks(v):
        return lambda z: [decode_frames(v, z[i:i + chunk]) for i in range(0, len(z), chunk)]

    t_kl, t_tiny = per_frame(by_chunks(kl), lat, args.reps), per_frame(by_chunks(tiny), lat, args.reps)
    print(f"{'decoder':<28}{'s/frame':>10}{'ratio':>8}   ({chunk} frame(s) per call)")
    print(f"{'SD1.5 VAE (AutoencoderKL)':<28}{t_kl:>10.3f}{1:>8.2f}")
    print(f"{'TAESD (AutoencoderTiny)':<28}{t_tiny:>10.3f}{t_tiny / t_kl:>8.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=1000, help="steps distilling the shapes TAESD")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    a = ap.parse_args()
    if a.quick:
        a.reps = 1
    import platform

    import torch

    print(f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    shapes(a)
    full_size(a)


if __name__ == "__main__":
    main()
