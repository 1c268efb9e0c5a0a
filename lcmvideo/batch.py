"""Running a batch of render jobs on several local devices or a Ray cluster.

Each worker holds one Session, so its models load once for all the jobs it gets. Jobs are
(schedule file, output, overrides) with outputs given as paths every worker can write:
on a cluster that means shared storage (NFS, a mounted bucket) at the same path everywhere.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .errors import LcmvideoError, usage

_session = None  # one per worker process


def _devices(n: int) -> list[str]:
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if n > count:
            raise usage(f"--workers: {n} asked for, but this machine has {count} GPU(s)")
        return [f"cuda:{i}" for i in range(n)]
    return ["cpu"] * n


def _init(model_flags: dict, devices, quiet: bool, threads: int):
    global _session
    import torch

    from .api import Session

    torch.set_num_threads(threads)
    device = devices.get() if hasattr(devices, "get") else devices
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


def run_local(jobs: list[tuple], model_flags: dict, workers: int, quiet: bool):
    """Jobs over `workers` processes, one device each (GPUs when present, else CPU threads split)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # CUDA and forked torch do not mix
    queue = ctx.Manager().Queue()
    for d in _devices(workers):
        queue.put(d)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                             initargs=(model_flags, queue, True, threads)) as pool:
        yield from tqdm(pool.map(run_job, jobs), total=len(jobs), desc="jobs", disable=quiet, leave=False)


def run_ray(jobs: list[tuple], model_flags: dict, address: str | None, workers: int | None, quiet: bool):
    """Jobs over Ray actors: one GPU each when the cluster has GPUs, else one CPU each."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise usage("--ray needs the optional extra: pip install 'lcmvideo[ray]'") from None
    from tqdm import tqdm

    if not ray.is_initialized():
        ray.init(address=address or None, ignore_reinit_error=True, logging_level="ERROR",
                 log_to_driver=not quiet)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = workers or max(1, gpus) or 1

    @ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)
    class Worker:
        def __init__(self, flags):
            _init(flags, "cuda" if gpus else "cpu", True, 1 if not gpus else os.cpu_count() or 1)

        def run(self, job):
            return run_job(job)

    pool = ActorPool([Worker.remote(model_flags) for _ in range(n)])
    yield from tqdm(pool.map_unordered(lambda a, j: a.run.remote(j), jobs), total=len(jobs), desc="jobs",
                    disable=quiet, leave=False)
