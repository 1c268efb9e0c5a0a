"""ControlNet cost: render time with one ControlNet against without, same settings, one process.

The ControlNet runs once per step over all frames of a window batch, beside the UNet, so
expect well under 1.6x. Also times skeleton drawing from OpenPose JSON (frames/s) and, when
the `pose` extra (MediaPipe) is installed, pose extraction on CPU (frames/s).

    python benchmarks/controlnet.py [--frames 16] [--steps 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.steps, args.reps = 4, 1, 1

    from PIL import Image

    from lcmvideo import models
    from lcmvideo.pipeline import pose, text2video
    from lcmvideo.schedule import ControlSpec, ModelPaths, Settings

    loaded = models.load(models.resolve(ModelPaths()))
    tmp = Path(tempfile.mkdtemp())
    people = [np.array([[0.5, 0.2, 1], [0.5, 0.3, 1], [0.4, 0.3, 1], [0.35, 0.45, 1], [0.3, 0.6, 1],
                        [0.6, 0.3, 1], [0.65, 0.45, 1], [0.7, 0.6, 1], [0.45, 0.6, 1], [0.45, 0.75, 1],
                        [0.45, 0.9, 1], [0.55, 0.6, 1], [0.55, 0.75, 1], [0.55, 0.9, 1], [0.48, 0.18, 1],
                        [0.52, 0.18, 1], [0.46, 0.2, 1], [0.54, 0.2, 1]], float)]
    Image.fromarray(pose.draw(people, 512, 512)).save(tmp / "0000.png")

    def settings(with_cn):
        s = Settings(frames=args.frames, steps=args.steps, seed=1, keyframes={"0": "a dancer"})
        if with_cn:
            s.controlnet = [ControlSpec(images=str(tmp / "0000.png"))]
        return s

    text2video.render(loaded, settings(True))  # warm-up, loads the ControlNet once
    t_with, t_without = [], []
    for _ in range(args.reps):
        for flag, bucket in ((False, t_without), (True, t_with)):
            t = time.perf_counter()
            text2video.render(loaded, settings(flag))
            bucket.append(time.perf_counter() - t)
    ratio = statistics.median(t_with) / statistics.median(t_without)
    print(f"embedded tiny family, CPU, {args.frames} frames 64x64, {args.steps} steps, {args.reps} reps")
    print(f"without ControlNet {statistics.median(t_without):.3f}s, with one {statistics.median(t_with):.3f}s: "
          f"ratio {ratio:.2f}  (expected < 1.6)")

    for i in range(64):
        pose.write_openpose_json(tmp / f"{i:04d}.json", people, 512, 512)
    t = time.perf_counter()
    for i in range(64):
        pose.draw(pose.read_openpose_json(tmp / f"{i:04d}.json"), 512, 512)
    print(f"OpenPose JSON -> 512x512 skeleton: {64 / (time.perf_counter() - t):.0f} frames/s")

    try:
        frames = np.stack([pose.draw(people, 256, 256)] * 16)
        t = time.perf_counter()
        pose.extract(frames)
        print(f"pose extraction (MediaPipe, CPU, 256x256): {16 / (time.perf_counter() - t):.1f} frames/s")
    except Exception as e:  # noqa: BLE001 - the extra is optional
        print(f"pose extraction: not measured ({e})")


if __name__ == "__main__":
    main()
