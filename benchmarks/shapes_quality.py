"""Speed against quality on the shapes world: LCM and TCD at 1, 2, 4, 8 steps, the teacher at 1-50.

The student is the shipped family with its LCM-LoRA (LCMScheduler, guidance 1); "TCD" is the same
LoRA sampled by diffusers' TCDScheduler with gamma 0 (the pipelines' eta), a multistep consistency
sampler that re-noises with its own noise estimate instead of fresh noise; the teacher is the same
family without the LoRA (DDIM, guidance 2.5, the distillation's middle). For every
colour x shape prompt and a few seeds, each sampler starts from the same noise. Two tables:

- pictures (the 2D UNet): colour accuracy, agreement with the 50-step teacher (same colour,
  centroid within 6 px), mean pixel distance to it, wall time per picture;
- 16-frame clips (the AnimateDiff pipeline): the same measures over every frame, wall time per clip.

The claim under test: 4 LCM steps come close to 25-50 teacher steps at a fraction of the time.
A third table gives the ceiling for any multistep LCM sampler here: LCMScheduler re-noises its
estimate with fresh noise at t = 759, 499, 259 (4 steps); re-noising the teacher's own 50-step
result there and letting the teacher finish shows how much of the layout survives (8x8 latents
carry it in a few values, so at t = 759 much of it does not).

The motion table: for each shipped motion LoRA (lcmvideo/data/shapes/motion_lora, AnimateDiff's
layout, weight 1), the share of 16-frame clips (4 LCM steps, the shipped shared noise, several
prompts and seeds) whose fitted centroid track goes its direction and the mean speed along it,
beside the same clips without the LoRA; and how far a 'still' prompt's shape wanders without one.

    python benchmarks/shapes_quality.py [--seeds 2] [--clip-seeds 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the training package (training/shapes)

RUNS = [("teacher", 50), ("LCM", 1), ("LCM", 2), ("LCM", 4), ("LCM", 8), ("TCD", 1), ("TCD", 2), ("TCD", 4),
        ("TCD", 8), ("teacher", 1), ("teacher", 2), ("teacher", 4), ("teacher", 8),
        ("teacher", 25)]  # the 50-step teacher first: it is the reference


def table(title, unit, cases, make):
    from training.shapes import quality

    colours = [c for _, c, _ in cases]
    print(f"\n{title}\n{'sampler':<10}{'steps':>6}{'colour':>9}{'agree@50':>10}{'dist@50':>9}{unit:>12}")
    ref = None
    for name, steps in RUNS:
        t0 = time.perf_counter()
        out = make(name, steps)  # (N, ...frames) uint8, one entry per case
        per = (time.perf_counter() - t0) / len(cases)
        ref = out if ref is None else ref
        flat = lambda a: a.reshape(-1, *a.shape[-3:])  # noqa: E731
        truth = np.repeat(colours, flat(out).shape[0] // len(cases)).tolist()
        print(f"{name:<10}{steps:>6}{quality.colour_rate(flat(out), truth):>9.0%}"
              f"{quality.agreement(flat(out), flat(ref)):>10.0%}{quality.pixel_distance(out, ref):>9.3f}"
              f"{per * (1000 if unit == 'ms/picture' else 1):>12.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt, pictures")
    ap.add_argument("--clip-seeds", type=int, default=1, help="seeds per prompt, clips")
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    a = ap.parse_args()

    from lcmvideo.api import Session
    from lcmvideo.models import embedded
    from training.shapes import quality

    if not embedded.use_shipped():
        raise SystemExit("the shapes weights are not shipped in this checkout (python training/shapes/train.py)")
    s1, s2 = Session(), Session(lcm_lora="none")
    student, teacher = s1.models(s1.settings(prompt="x")), s2.models(s2.settings(prompt="x"))
    guidance = {"LCM": 1.0, "TCD": 1.0, "teacher": quality.TEACHER_GUIDANCE}

    cases = quality.prompts_and_truth(a.seeds)[:3 if a.quick else None]
    pics = {"LCM": quality.image_pipeline(student, "lcm"), "TCD": quality.image_pipeline(student, "tcd"),
            "teacher": quality.image_pipeline(teacher, "ddim")}
    print(f"CPU, 64x64; {len(cases)} pictures per sampler ({len(cases) // a.seeds} prompts x {a.seeds} seeds)")
    table("pictures", "ms/picture", cases, lambda name, steps: quality.generate(
        pics[name], [p for p, _, _ in cases], [s for _, _, s in cases], steps, guidance[name]))

    motion_table(quick=a.quick)
    if a.quick:
        return
    cases = quality.prompts_and_truth(a.clip_seeds)
    clips = {"LCM": quality.clip_pipeline(student, "lcm"), "TCD": quality.clip_pipeline(student, "tcd"),
             "teacher": quality.clip_pipeline(teacher, "ddim")}
    table(f"16-frame clips ({len(cases)} per sampler)", "s/clip", cases, lambda name, steps: np.stack([
        quality.generate_clip(clips[name], p, s, steps, guidance[name]) for p, _, s in cases]))

    renoise_ceiling(pics["teacher"], quality.prompts_and_truth(a.seeds), guidance["teacher"])


def motion_table(quick: bool = False):
    """Clips rendered by lcmvideo itself, as users render them (its sampler re-noises with the family's
    shared noise too), with each `embedded:<direction>` motion LoRA and without; "colour" = the share
    of frames whose shape keeps the prompt's colour (a LoRA is to move the picture, not redraw it)."""
    from lcmvideo.api import Session
    from lcmvideo.shapes import analyse, world
    from training.shapes import quality

    session = Session()
    prompts, seeds = (quality.MOTION_PROMPTS[:1], (1,)) if quick else (quality.MOTION_PROMPTS, (1, 2, 3, 4))

    def clips(d=None):
        """(velocities, colour kept) over every prompt x seed."""
        vs, kept = [], []
        for p in prompts:
            for s in seeds:
                reads = analyse.read_clip(session.render(prompt=p, frames=16, seed=s, steps=4,
                                                         motion_loras=[f"embedded:{d}"] if d else []))
                vs.append(quality.velocity(reads))
                kept.append(quality.colour_kept(reads, p))
        return vs, float(np.mean(kept))

    n = len(prompts) * len(seeds)
    plain, plain_colour = clips()
    print(f"\nmotion LoRAs, {n} clips each (4 LCM steps, weight 1); without: the same clips with no LoRA "
          f"(colour kept {plain_colour:.0%})")
    print(f"{'LoRA':<8}{'its way':>9}{'px/frame':>10}{'colour':>8}{'without':>9}{'px/frame':>10}{'s/clip':>8}")
    for d in ("right", "left", "up", "down"):
        dx, dy = world.MOTIONS[f"moving {d}"]
        t0 = time.perf_counter()
        tracks, colour = clips(d)
        per = (time.perf_counter() - t0) / n

        way = lambda vs, d=d: np.mean([quality.goes_the_right_way(v, f"moving {d}") for v in vs])  # noqa: E731
        speed = lambda vs, dx=dx, dy=dy: np.mean([v[0] * dx + v[1] * dy for v in vs if v is not None])  # noqa: E731
        print(f"{d:<8}{way(tracks):>9.0%}{speed(tracks):>10.2f}{colour:>8.0%}{way(plain):>9.0%}{speed(plain):>10.2f}"
              f"{per:>8.2f}")
    still = [quality.wander(session.render(prompt=f"{p}, still", frames=16, seed=s, steps=4))
             for p in prompts for s in seeds]
    print(f"'still' without a LoRA: the shape wanders {np.median(still):.1f} px (median; max {max(still):.1f}) "
          "from its first place")


def renoise_ceiling(pipe, cases, guidance):
    """Agreement with the 50-step teacher (`pipe`) after re-noising its result at t and finishing with it."""
    import torch
    from diffusers import DDIMScheduler

    from training.shapes import quality

    prompts, seeds = [c[0] for c in cases], [c[2] for c in cases]
    with torch.inference_mode():
        cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True)
        emb = torch.cat([uncond, cond])
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(50)

        def run(x, t_max):
            for t in sched.timesteps[sched.timesteps <= t_max]:
                e_u, e_c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
                x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
            return x

        def pictures(z):
            img = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
            return ((img.permute(0, 2, 3, 1).float().numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)

        shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        x = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        z0 = run(x, 1000)
        ref = pictures(z0)
        g = torch.Generator().manual_seed(0)
        print("\nlayout kept after re-noising the 50-step teacher at t (the ceiling for LCM's multistep sampler)")
        for t in (759, 499, 259):
            t = int(sched.timesteps[sched.timesteps <= t][0])  # the teacher's nearest step at or below it
            zt = sched.add_noise(z0, torch.randn(z0.shape, generator=g), torch.tensor([t]))
            print(f"t = {t}: agreement {quality.agreement(pictures(run(zt, t)), ref):.0%}")


if __name__ == "__main__":
    main()
