"""Running a batch of render jobs on several local devices or a Ray cluster.

Each worker holds one Session, so its models load once for all the jobs it gets. Jobs are
(schedule file, output, overrides, job key, label) with outputs given as paths every worker can
write: on a cluster that means shared storage (NFS, a mounted bucket) at the same path everywhere.

A worker that dies (at full size, usually the kernel's out-of-memory killer) takes only its job:
the job runs once more on a fresh worker, and if that one dies too the job fails alone with one
line naming the likely cause; the other jobs go on. Results are tuples for app._collect:
('ok', label, output), ('error', label, message), and locally ('retry', label, note).
"""

from __future__ import annotations

import os
import signal
from collections import deque
from dataclasses import replace
from pathlib import Path

from .errors import LcmvideoError, usage

_session = None  # one per worker process

HINT = "probably out of memory; try --dtype float16, a smaller size or fewer --workers"

# Test-only fault-injection hook, off unless set: a folder where each worker process leaves an
# empty file "<output's name>.<pid>" as it starts a job, so a test can SIGKILL that process mid-job.
TEST_PIDS_ENV = "LCMVIDEO_TEST_JOB_PIDS"


def _devices(n: int) -> list[str]:
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if n > count:
            raise usage(f"--workers: {n} asked for, but this machine has {count} GPU(s)")
        return [f"cuda:{i}" for i in range(n)]
    return ["cpu"] * n


def _init(model_flags: dict, device: str, quiet: bool, threads: int):
    global _session
    import torch

    from .api import Session

    torch.set_num_threads(threads)
    flags = dict(model_flags)
    if flags.get("device") in (None, "auto"):
        flags["device"] = device
    _session = Session(quiet=quiet, **flags)


def run_job(job: tuple, session=None) -> tuple:
    """('ok', label, output) or ('error', label, message); `session` defaults to this worker's."""
    source, out, overrides, key, label = job
    session = session or _session
    try:
        s = replace(session.settings(Path(source) if source else None, **overrides), job=key)
        return "ok", label, str(session.render_to_file(s, out))
    except LcmvideoError as e:
        return "error", label, e.message


def _worker_job(job: tuple) -> tuple:
    """run_job in a worker process, announcing itself to a test when the hook is set."""
    folder = os.environ.get(TEST_PIDS_ENV)
    if folder:
        Path(folder, f"{Path(job[1] or 'job').name}.{os.getpid()}").touch()  # empty: its name says it all
    return run_job(job)


# --- local worker processes -------------------------------------------------------------------

def _serve(conn, model_flags: dict, device: str, threads: int):
    """A worker process: one Session, then jobs from `conn` until None (or the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends the workers
    _init(model_flags, device, True, threads)
    conn.send(("ready",))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            reply = ("done", _worker_job(job))
        except Exception as e:  # noqa: BLE001 - not the job's input: the parent raises it, as a pool would
            import pickle

            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001
                e = RuntimeError(f"{type(e).__name__}: {e}")
            reply = ("crash", e)
        conn.send(reply)


def _why(exitcode: int | None) -> tuple[str, bool]:
    """How a worker ended, and whether that was SIGKILL (what the out-of-memory killer sends)."""
    if exitcode is not None and exitcode < 0:
        return f"worker killed (signal {-exitcode})", -exitcode == signal.SIGKILL
    return f"worker exited (code {exitcode})", False


class _Slot:
    """One device's worker process, its pipe, and the job it holds; replaced when it dies."""

    def __init__(self, ctx, args: tuple):
        self.ctx, self.args = ctx, args
        self.job = None  # (index, job) being run
        self.retry = None  # (index, job) this slot's fresh worker runs first
        self.failed_starts = 0  # workers in a row that died before they were ready
        self.open = True
        self.start()

    def start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_serve, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()  # the parent keeps only its end, so a dead worker reads as end-of-file

    def receive(self):
        """The worker's next message, ('died', exitcode), or None when there is nothing yet."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        if self.proc.is_alive():
            self.proc.join(5)  # its pipe closed: it is on its way out
            if self.proc.is_alive():
                return None
        self.conn.close()
        return ("died", self.proc.exitcode)

    def give(self, todo: deque):
        """Send the next job (this slot's retry first); with none left, let the worker go."""
        if self.retry is None and not todo:
            self.close()
            return
        self.job = self.retry or todo.popleft()
        self.retry = None
        try:
            self.conn.send(self.job[1])
        except OSError:
            pass  # it just died: its sentinel says so on the next wait

    def close(self):
        self.open = False
        try:
            self.conn.send(None)
        except OSError:
            pass

    def stop(self):
        """A closed slot's worker was told to go; one still open (Ctrl-C, an error) is ended."""
        if not self.open:
            self.proc.join(5)
        for end in (self.proc.terminate, self.proc.kill):
            if self.proc.is_alive():
                end()
                self.proc.join(5)
        self.conn.close()


def run_local(jobs: list[tuple], model_flags: dict, workers: int, quiet: bool):
    """Jobs over `workers` processes, one device each (GPUs when present, else CPU threads split).

    One process per device, supervised here rather than by a pool: a pool breaks as a whole when
    one of its processes is killed, and this keeps going with a fresh worker in the dead one's place.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from tqdm import tqdm

    if not jobs:
        return
    ctx = mp.get_context("spawn")  # CUDA and forked torch do not mix
    devices = _devices(workers)[:len(jobs)]
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    todo = deque(enumerate(jobs))
    deaths: dict[int, int] = {}  # job index -> workers that died running it
    slots, why, sigkill = [], "", False
    bar = tqdm(total=len(jobs), desc="jobs", disable=quiet, leave=False)
    try:
        slots += [_Slot(ctx, (model_flags, d, threads)) for d in devices]
        while any(s.open for s in slots):
            live = [s for s in slots if s.open]
            ready = set(wait([s.conn for s in live] + [s.proc.sentinel for s in live]))
            for s in live:
                if s.conn not in ready and s.proc.sentinel not in ready:
                    continue
                msg = s.receive()
                if msg is None:
                    continue
                if msg[0] == "ready":
                    s.failed_starts = 0
                    s.give(todo)
                elif msg[0] == "done":
                    s.job = None
                    bar.update()
                    bar.clear()  # what the caller prints next gets a line of its own
                    yield msg[1]
                    s.give(todo)
                elif msg[0] == "crash":
                    raise msg[1]
                else:  # died
                    why, sigkill = _why(msg[1])
                    if s.job is None:
                        s.failed_starts += 1
                    else:
                        i, job = s.job
                        s.job = None
                        deaths[i] = deaths.get(i, 0) + 1
                        if deaths[i] == 1:
                            s.retry = (i, job)
                            bar.clear()
                            yield "retry", job[4], f"{why} while rendering it; running it once more on a fresh worker"
                        else:
                            bar.update()
                            bar.clear()
                            yield "error", job[4], f"{why} on both tries" + (f", {HINT}" if sigkill else "")
                    if s.failed_starts >= 2 or (s.retry is None and not todo):
                        s.open = False  # no more to do here, or workers cannot even start on it
                        if s.retry is not None:
                            todo.appendleft(s.retry)
                            s.retry = None
                    else:
                        s.start()
        for _, job in todo:  # every slot gave up: its workers died before they could start
            bar.update()
            bar.clear()
            yield "error", job[4], f"no worker could start ({why})" + (f", {HINT}" if sigkill else "")
    finally:
        bar.close()
        for s in slots:
            s.stop()


# --- Ray ---------------------------------------------------------------------------------------

class _RayWorker:
    """A Ray actor holding one Session (made a remote class in run_ray, with its restart policy)."""

    def __init__(self, flags: dict, gpus: int):
        _init(flags, "cuda" if gpus else "cpu", True, (os.cpu_count() or 1) if gpus else 1)

    def run(self, job: tuple) -> tuple:
        return _worker_job(job)


def run_ray(jobs: list[tuple], model_flags: dict, address: str | None, workers: int | None, quiet: bool):
    """Jobs over Ray actors: one GPU each when the cluster has GPUs, else one CPU each.

    A killed actor is restarted (its models load again) and Ray runs the job it held once more
    there (max_task_retries=1); a job whose actor dies on both tries fails alone.
    """
    try:
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError
    except ImportError:
        raise usage("--ray needs the optional extra: pip install 'lcmvideo[ray]'") from None
    from tqdm import tqdm

    if not jobs:
        return
    if not ray.is_initialized():
        ray.init(address=address or None, ignore_reinit_error=True, logging_level="ERROR",
                 log_to_driver=not quiet)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = min(workers or max(1, gpus), len(jobs))
    # each job can end at most two actor processes; the rest is room for deaths between jobs
    Worker = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                        max_restarts=2 * len(jobs) + n, max_task_retries=1)(_RayWorker)
    actors = [Worker.remote(model_flags, gpus) for _ in range(n)]
    todo, running = deque(jobs), {}

    def submit(actor):
        if todo:
            job = todo.popleft()
            running[actor.run.remote(job)] = (actor, job)

    for a in actors:
        submit(a)
    with tqdm(total=len(jobs), desc="jobs", disable=quiet, leave=False) as bar:
        try:
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                actor, job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except OutOfMemoryError:
                    result = "error", job[4], "worker killed by Ray's memory monitor on both tries, " + HINT
                except RayActorError:
                    result = "error", job[4], f"worker process died on both tries, {HINT}"
                bar.update()
                bar.clear()
                yield result
                submit(actor)
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)
