"""Memory of long clips: peak RSS of whole `lcmvideo render` processes at 16, 128 and 1024 frames.

Beyond the motion module's window, a longer clip should cost only what grows with its length:
the latents, the per-frame text embeddings and the output frames. This prints the peak of each
run, the growth per frame against the first, and what those per-frame tensors take.

    python benchmarks/long_clips.py                 # the embedded family, 64x64, 1 step
    python benchmarks/long_clips.py --quick         # 16 and 32 frames: a smoke check
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(frames: int, out: Path) -> tuple[float, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "lcmvideo", "-q", "render", "-p", "a red circle",
           "--frames", str(frames), "--steps", "1", "--seed", "1", "-o", str(out / f"{frames}.mp4")]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return kb / 1024, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 128, 1024])
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    a = ap.parse_args()
    counts = [16, 32] if a.quick else a.frames
    # per frame at 64x64 on the embedded family: latents 4x8x8 and a 77x64 text embedding in float32,
    # the uint8 output frame; with CFG the negative's embedding too
    grows = (4 * 8 * 8 * 4 + 77 * 64 * 4 + 64 * 64 * 3) / 2**20
    print(f"embedded family, 64x64, 1 step, CPU; per-frame tensors {grows * 1024:.1f} KiB")
    print(f"{'frames':>7}{'peak RSS MiB':>14}{'growth MiB/frame':>18}{'s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for n in counts:
            rss, secs = run(n, Path(tmp))
            growth = "" if first is None else f"{(rss - first[1]) / (n - first[0]):.3f}"
            first = first or (n, rss)
            print(f"{n:>7}{rss:>14.0f}{growth:>18}{secs:>8.1f}")


if __name__ == "__main__":
    main()
