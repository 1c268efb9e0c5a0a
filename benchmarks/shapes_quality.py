"""Speed against quality on the shapes world: LCM at 1, 2, 4, 8 steps, the teacher at 4, 8, 25, 50.

For every colour x shape prompt and a few seeds, each sampler starts from the same noise.
Printed per sampler: colour accuracy (dominant colour = the prompt's), agreement with the
50-step teacher (same colour, centroid within 6 px), mean pixel distance to it, and wall
time per picture. The claim under test: 4 LCM steps come close to 25-50 teacher steps.

    python benchmarks/shapes_quality.py [--seeds 2]
"""

from __future__ import annotations

import argparse
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    a = ap.parse_args()

    from lcmvideo import tiny
    from lcmvideo.api import Session
    from lcmvideo.shapes import quality

    if not tiny.use_shipped():
        raise SystemExit("the shapes weights are not shipped in this checkout (python -m lcmvideo.shapes.train)")
    cases = quality.prompts_and_truth(a.seeds)
    prompts, colours, seeds = [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]
    s1, s2 = Session(), Session(lcm_lora="none")
    student = quality.image_pipeline(s1.models(s1.settings(prompt="x")), "lcm")
    teacher = quality.image_pipeline(s2.models(s2.settings(prompt="x")), "ddim")
    runs = [("teacher", teacher, 50, quality.TEACHER_GUIDANCE)]
    runs += [("LCM", student, n, 1.0) for n in (1, 2, 4, 8)]
    runs += [("teacher", teacher, n, quality.TEACHER_GUIDANCE) for n in (4, 8, 25)]
    ref = None
    print(f"{len(cases)} pictures per sampler ({len(cases) // a.seeds} prompts x {a.seeds} seeds), 64x64, CPU\n")
    print(f"{'sampler':<10}{'steps':>6}{'colour':>9}{'agree@50':>10}{'dist@50':>9}{'ms/picture':>12}")
    for name, pipe, steps, g in runs:
        t0 = time.perf_counter()
        out = quality.generate(pipe, prompts, seeds, steps, g)
        ms = 1000 * (time.perf_counter() - t0) / len(cases)
        ref = out if ref is None else ref
        print(f"{name:<10}{steps:>6}{quality.colour_rate(out, colours):>9.0%}{quality.agreement(out, ref):>10.0%}"
              f"{quality.pixel_distance(out, ref):>9.3f}{ms:>12.1f}")


if __name__ == "__main__":
    main()
