"""Batches whose workers die: a killed worker takes only its job, locally and on Ray.

The test kills worker processes from outside with SIGKILL, as the kernel's out-of-memory killer
does: batch.TEST_PIDS_ENV (a test-only hook) has each worker leave "<output>.<pid>" in a folder
as it starts a job, and a thread here kills that pid while the job runs.
"""

import os
import re
import signal
import threading
import time

import pytest
from click.testing import CliRunner

from lcmvideo import batch
from lcmvideo.cli import cli

HINT = "probably out of memory; try --dtype float16, a smaller size or fewer --workers"


class Killer(threading.Thread):
    """SIGKILLs the worker running a job as the job starts, `plan[output name]` times per job."""

    def __init__(self, folder, plan: dict[str, int]):
        super().__init__(daemon=True)
        self.folder, self.plan, self.seen, self.done = folder, dict(plan), set(), threading.Event()

    def run(self):
        while not self.done.is_set():
            for f in self.folder.iterdir():
                if f.name in self.seen:
                    continue
                self.seen.add(f.name)
                name, _, pid = f.name.rpartition(".")
                if self.plan.get(name, 0) > 0:
                    self.plan[name] -= 1
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()

    def pids(self, name: str) -> list[int]:
        """The worker processes that started this job."""
        return [int(f.name.rpartition(".")[2]) for f in self.folder.iterdir() if f.name.rpartition(".")[0] == name]


def four_jobs(tmp_path):
    d = tmp_path / "jobs"
    d.mkdir()
    for i, name in enumerate("abcd"):
        (d / f"{name}.yaml").write_text(f"prompt: a red circle\nframes: 3\nsteps: 1\nseed: {i}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "pids").mkdir()
    return d, tmp_path / "out", tmp_path / "pids"


def check_first_run(r, killer, out, retry_note: bool):
    assert r.exit_code == 1, r.output
    errors = re.findall(r"lcmvideo: error: [^\r\n]*", r.stderr)
    b = out.parent / "jobs" / "b.yaml"
    assert len(errors) == 2, r.stderr  # the job, then the batch's summary
    assert errors[0].startswith(f"lcmvideo: error: {b}: ") and errors[0].endswith(f" on both tries, {HINT}")
    assert errors[1] == f"lcmvideo: error: 1 of 4 jobs failed: {b}"
    assert "Error" not in r.stderr and "Traceback" not in r.stderr
    if retry_note:
        assert "a.yaml: worker killed (signal 9) while rendering it; running it once more on a fresh worker" in r.stderr
    assert "batch: 3 of 4 jobs done, 1 failed" in r.stderr
    assert sorted(p.name for p in out.glob("*.gif")) == ["a.gif", "c.gif", "d.gif"]
    a, b = killer.pids("a.gif"), killer.pids("b.gif")
    assert len(a) == 2 and len(b) == 2  # each killed job ran exactly once more...
    assert len(set(a + b)) == 4  # ...each time in a fresh process
    assert len(killer.pids("c.gif")) == len(killer.pids("d.gif")) == 1


def check_rerun(r, out):
    assert r.exit_code == 0, r.output
    assert r.stderr.count("is done") == 3
    assert sorted(p.name for p in out.glob("*.gif")) == ["a.gif", "b.gif", "c.gif", "d.gif"]


def test_local_worker_killed_mid_job_takes_only_its_job(tmp_path, monkeypatch):
    jobs, out, pids = four_jobs(tmp_path)
    monkeypatch.setenv(batch.TEST_PIDS_ENV, str(pids))
    args = ["render", str(jobs), "--workers", "2", "-o", str(out), "-f", "gif"]
    with Killer(pids, {"a.gif": 1, "b.gif": 2}) as killer:
        r = CliRunner().invoke(cli, args)
    check_first_run(r, killer, out, retry_note=True)
    assert "worker killed (signal 9) on both tries" in r.stderr
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gif")}
    r = CliRunner().invoke(cli, args)  # the rerun renders only the failed job
    check_rerun(r, out)
    assert all(done[name] == (out / name).stat().st_mtime_ns for name in done)


def test_ray_actor_killed_mid_job_takes_only_its_job(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    jobs, out, pids = four_jobs(tmp_path)
    monkeypatch.setenv(batch.TEST_PIDS_ENV, str(pids))  # before ray.init: its workers inherit it
    args = ["render", str(jobs), "--ray", "--workers", "2", "-o", str(out), "-f", "gif"]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        with Killer(pids, {"a.gif": 1, "b.gif": 2}) as killer:
            r = CliRunner().invoke(cli, args)
        check_first_run(r, killer, out, retry_note=False)
        done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gif")}
        r = CliRunner().invoke(cli, args)
    finally:
        ray.shutdown()
    check_rerun(r, out)
    assert all(done[name] == (out / name).stat().st_mtime_ns for name in done)


def test_workers_that_cannot_start_fail_the_jobs_not_the_command():
    jobs = [(None, f"/nonexistent/{n}.gif", {}, n, n) for n in "ab"]
    results = list(batch.run_local(jobs, {"bogus": 1}, 1, quiet=True))  # each worker dies as it starts
    assert results == [("error", n, "no worker could start (worker exited (code 1))") for n in "ab"]
