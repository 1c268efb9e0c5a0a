"""FreeInit on the shapes world: temporal consistency and cost with and without it.

For colour x shape prompts (with a motion word) and a few seeds, each clip is rendered plainly and
with FreeInit at 2 and 3 iterations (butterworth, diffusers' defaults; gaussian at 3 too), from
the same seed. Reported per setting: warping error (lcmvideo.output.flow: each frame against the
previous one warped by the clip's own optical flow, occlusions masked; lower = steadier), frame
difference (no motion compensation), the colour the prompt asked for (the shapes analyser), the
centroid's frame-to-frame jump, and the cost against plain sampling in CPU seconds of this process
(steadier than wall time on a shared machine; run with OMP_NUM_THREADS=1 they are the same work).
FreeInit runs the sampler N times; text encoding and decoding are shared, so a little under N.

    python benchmarks/free_init.py [--seeds 2] [--frames 16] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SETTINGS = [("off", None), ("butterworth x2", ("butterworth", 2)), ("butterworth x3", ("butterworth", 3)),
            ("gaussian x3", ("gaussian", 3))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    a = ap.parse_args()
    os.environ.setdefault("LCMVIDEO_EMBEDDED", "shapes")
    import torch

    from lcmvideo.api import Session
    from lcmvideo.output import flow
    from lcmvideo.schedule import FreeInit
    from lcmvideo.shapes import analyse

    colours, shapes = ("red", "green", "blue", "yellow", "white"), ("circle", "square", "triangle")
    motions = ("moving right", "moving left", "moving up", "moving down", "still")
    cases = [(f"a {c} {s} on a black background, {motions[(i + j) % len(motions)]}", c)
             for i, c in enumerate(colours) for j, s in enumerate(shapes)]
    seeds, frames = a.seeds, a.frames
    if a.quick:
        cases, seeds, frames = cases[:1], 1, 8
    session = Session()
    session.render(prompt="warm up", frames=frames, seed=0, steps=a.steps)
    print(f"FreeInit on the shapes family: {len(cases)} prompts x {seeds} seeds, {frames} frames, {a.steps} steps, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'setting':<16}{'warping err':>12}{'frame diff':>11}{'colour':>8}{'jump px':>9}{'cpu s/clip':>11}{'cost':>7}")
    base = None
    for name, fi in SETTINGS:
        free_init = FreeInit(iterations=fi[1], filter=fi[0]) if fi else None
        warp, diff, ok, jumps, spent = [], [], [], [], 0.0
        for prompt, colour in cases:
            for seed in range(1, seeds + 1):
                t0 = time.process_time()
                clip = session.render(prompt=prompt, frames=frames, seed=seed, steps=a.steps, free_init=free_init)
                spent += time.process_time() - t0
                warp.append(flow.warping_error(clip))
                diff.append(flow.frame_difference(clip))
                reads = analyse.read_clip(clip)
                ok += [r.colour == colour for r in reads]
                xy = np.array([(r.x, r.y) for r in reads if r.colour is not None])
                if len(xy) > 1:
                    jumps.append(float(np.linalg.norm(np.diff(xy, axis=0), axis=1).mean()))
        per = spent / (len(cases) * seeds)
        base = base or per
        print(f"{name:<16}{np.mean(warp):>12.4f}{np.mean(diff):>11.4f}{np.mean(ok):>8.0%}{np.mean(jumps):>9.2f}"
              f"{per:>11.2f}{per / base:>6.2f}x")


if __name__ == "__main__":
    main()
