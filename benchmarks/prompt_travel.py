"""Prompt travel cost: text-encoder calls and wall time per frame as clips get longer.

For 16/64/128 frames with 2 and 8 keyframes, renders on the embedded tiny family and prints
the text encoder's call count (must be the number of distinct prompts, not frames), the
UNet's frame-evaluations per frame (context-window overlap), and wall time per frame. The
ratio of per-frame cost at 128 frames to that at 16 should stay <= 1.3: long clips must not
get slower per frame.

    python benchmarks/prompt_travel.py [--steps 4] [--reps 2] [--overlap 4]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.reps = 1, 1

    import torch

    from lcmvideo import models
    from lcmvideo.pipeline import text2video
    from lcmvideo.schedule import ModelPaths, Settings

    loaded = models.load(models.resolve(ModelPaths()))
    pipe = loaded.pipe
    counts = {"text": 0, "unet_frames": 0}
    pipe.text_encoder.register_forward_pre_hook(lambda m, a: counts.__setitem__("text", counts["text"] + 1))
    pipe.unet.register_forward_pre_hook(
        lambda m, a: counts.__setitem__("unet_frames", counts["unet_frames"] + a[0].shape[0] * a[0].shape[2]))
    words = ["red circle", "blue square", "green triangle", "yellow star", "white moon", "orange sun",
             "purple heart", "black cat"]

    def settings(frames, n_kf):
        s = Settings(frames=frames, steps=args.steps, seed=1)
        s.context.overlap = args.overlap
        s.keyframes = {str(round(i * (frames - 1) / (n_kf - 1))): f"a {words[i]}" for i in range(n_kf)}
        return s

    text2video.render(loaded, settings(16, 2))  # warm-up
    per_frame = {}
    print(f"cpu x{torch.get_num_threads()} threads, embedded tiny family 64x64, {args.steps} steps, "
          f"context 16 overlap {args.overlap}")
    print(f"{'frames':>6} {'keyframes':>9} {'text calls':>10} {'unet frames/frame':>17} {'s/frame':>9}")
    for frames in (16, 64, 128):
        for n_kf in (2, 8):
            times = []
            for _ in range(args.reps):
                counts.update(text=0, unet_frames=0)
                t = time.perf_counter()
                out = text2video.render(loaded, settings(frames, n_kf))
                times.append(time.perf_counter() - t)
                assert out.shape[0] == frames
            spf = statistics.median(times) / frames
            per_frame[(frames, n_kf)] = spf
            print(f"{frames:>6} {n_kf:>9} {counts['text']:>10} {counts['unet_frames'] / frames / args.steps:>17.3f} "
                  f"{spf:>9.4f}")
    for n_kf in (2, 8):
        print(f"per-frame cost 128 vs 16 frames, {n_kf} keyframes: "
              f"{per_frame[(128, n_kf)] / per_frame[(16, n_kf)]:.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
