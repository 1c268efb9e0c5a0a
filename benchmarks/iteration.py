"""The edit-render loop: watch mode against a fresh one-shot CLI run, and batch throughput.

1. Saves an edit to a schedule while `lcmvideo render --watch` runs, and times until the new
   output is in place; compares with a fresh `lcmvideo render` process doing the same render
   (imports, model load and all). Target: watch <= 0.3 x one-shot on the embedded default.
2. Renders a batch of clips with 1 and 2 local workers and prints clips per minute.

    python benchmarks/iteration.py [--reps 3] [--jobs 6]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEDULE = "prompt: a red circle moving right, take {n}\nframes: 16\nsteps: 4\nseed: {n}\n"


def wait_for_new(path: Path, after_ns: int, timeout: float = 300.0) -> float:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.stat().st_mtime_ns > after_ns:
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="a smoke check in seconds, not a measurement")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.jobs = 1, 2
    d = Path(tempfile.mkdtemp())
    exe = [sys.executable, "-m", "lcmvideo.cli", "-q", "render"]

    # one-shot: a fresh process per render
    one_shot = []
    for n in range(args.reps):
        (d / "o.yaml").write_text(SCHEDULE.format(n=n))
        t = time.perf_counter()
        subprocess.run(exe + [str(d / "o.yaml"), "-o", str(d / "o.mp4")], check=True)
        one_shot.append(time.perf_counter() - t)

    # watch: one process, edits saved while it runs
    sched, out = d / "w.yaml", d / "w.mp4"
    sched.write_text(SCHEDULE.format(n=100))
    proc = subprocess.Popen(exe + [str(sched), "-o", str(out), "--watch", "--max-renders", str(args.reps + 1)])
    wait_for_new(out, 0)
    watch = []
    for n in range(args.reps):
        time.sleep(0.3)
        before = out.stat().st_mtime_ns
        t = time.perf_counter()
        sched.write_text(SCHEDULE.format(n=200 + n))
        watch.append(wait_for_new(out, before) - t)
    proc.wait(timeout=300)
    o, w = statistics.median(one_shot), statistics.median(watch)
    print(f"one-shot CLI render (fresh process): median {o:.2f}s")
    print(f"watch mode, save -> new output:      median {w:.2f}s")
    print(f"watch / one-shot: {w / o:.2f}  (target <= 0.3)")

    # batch throughput
    jobs = d / "jobs"
    jobs.mkdir()
    for n in range(args.jobs):
        (jobs / f"j{n}.yaml").write_text(SCHEDULE.format(n=n))
    for workers in (1, 2):
        outs = d / f"out{workers}"
        outs.mkdir()
        t = time.perf_counter()
        subprocess.run(exe + [str(jobs), "-o", str(outs), "--workers", str(workers)], check=True)
        dt = time.perf_counter() - t
        print(f"batch of {args.jobs} clips, {workers} worker(s): {dt:.1f}s, {60 * args.jobs / dt:.1f} clips/min")


if __name__ == "__main__":
    main()
