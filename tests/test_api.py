"""The Python API, watch mode and batches: models load once, edits re-render, bad jobs fail alone."""

import json
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import lcmvideo
from lcmvideo import app
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.output import video


def test_session_loads_once_and_matches_the_cli(tmp_path):
    session = lcmvideo.Session()
    a = session.render(prompt="a red circle", frames=6, steps=2, seed=3)
    b = session.render(prompt="a blue square", frames=6, steps=2, seed=3)
    assert session.loads == 1
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    diff = np.abs(a.astype(int) - b)
    assert diff.mean() > 0.2 and diff.max() > 2  # the prompt reached the frames (an untrained model: weakly)
    r = CliRunner().invoke(cli, ["-q", "render", "--prompt", "a red circle", "--frames", "6", "--steps", "2",
                                 "--seed", "3", "-o", str(tmp_path / "cli"), "-f", "png"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(video.read(tmp_path / "cli")[0], a)
    assert not list(tmp_path.glob("*.mp4"))  # render() writes nothing


def test_session_reloads_only_when_models_change(tiny_dir):
    session = lcmvideo.Session()
    session.render(prompt="a", frames=2, steps=1, seed=1)
    session.render(prompt="b", frames=2, steps=1, seed=1, lcm_lora_scale=0.5)
    assert session.loads == 2
    session.render(prompt="c", frames=2, steps=1, seed=1, lcm_lora_scale=0.5)
    assert session.loads == 2
    with pytest.raises(TypeError, match="unknown model settings: bogus"):
        lcmvideo.Session(bogus=1)


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_watch_rerenders_edits_and_survives_broken_ones(tmp_path):
    sched = tmp_path / "w.yaml"
    out = tmp_path / "w.mp4"
    sched.write_text("prompt: a red circle\nframes: 4\nsteps: 1\nseed: 1\n")
    messages = []
    session = lcmvideo.Session(say=messages.append)
    result = {}

    def run():
        result["written"] = app.render_command([sched], {"output": str(out)}, messages.append, quiet=True,
                                               watch=True, max_renders=2, session=session)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert wait_for(lambda: out.exists() and any("watching" in m for m in messages))
    first = video.read(out)[0]
    time.sleep(0.05)
    sched.write_text("prompt: a red circle\nframes: 40000000000\n")  # broken: invalid frames
    assert wait_for(lambda: any("frames" in m and "error" in m for m in messages))
    sched.write_text("prompt: a red circle\nframes: 6\nsteps: 1\nseed: 1\n")
    t.join(timeout=120)
    assert not t.is_alive()
    second = video.read(out)[0]
    assert first.shape[0] == 4 and second.shape[0] == 6  # the edit reached the output
    assert session.loads == 1 and len(result["written"]) == 2


def test_batch_one_bad_file_fails_alone_and_reruns_skip(tmp_path):
    d = tmp_path / "jobs"
    d.mkdir()
    (d / "a.yaml").write_text("prompt: a red circle\nframes: 3\nsteps: 1\nseed: 1\n")
    (d / "b.yaml").write_text("prompt: a blue square\nframes: 3\nsteps: 1\nseed: 2\n")
    (d / "c.yaml").write_text("prompt: x\nframes: 3\nbogus: 1\n")
    outs = tmp_path / "outs"
    outs.mkdir()
    r = CliRunner().invoke(cli, ["render", str(d / "a.yaml"), str(d / "b.yaml"), str(d / "c.yaml"),
                                 "-o", str(outs)])
    assert r.exit_code == 1
    assert "c.yaml: bogus (line 3): unknown key" in r.stderr
    assert "1 of 3 jobs failed" in r.stderr
    assert sorted(p.name for p in outs.iterdir()) == ["a.mp4", "a.mp4.json", "b.mp4", "b.mp4.json"]
    before = (outs / "a.mp4").stat().st_mtime_ns
    r = CliRunner().invoke(cli, ["render", str(d), "-o", str(outs)])  # a folder works too
    assert r.exit_code == 1 and r.stderr.count("is done") == 2
    assert (outs / "a.mp4").stat().st_mtime_ns == before
    (d / "a.yaml").write_text("prompt: a red circle\nframes: 4\nsteps: 1\nseed: 1\n")  # an edited job runs again
    r = CliRunner().invoke(cli, ["render", str(d / "a.yaml"), str(d / "b.yaml"), "-o", str(outs)])
    assert r.exit_code == 0 and r.stderr.count("is done") == 1
    assert video.read(outs / "a.mp4")[0].shape[0] == 4


def test_seed_sweep(tmp_path):
    (tmp_path / "s.yaml").write_text("prompt: a red circle\nframes: 3\nsteps: 1\n")
    r = CliRunner().invoke(cli, ["-q", "render", str(tmp_path / "s.yaml"), "--seeds", "5-6", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    a, b = video.read(tmp_path / "s-s5.mp4")[0], video.read(tmp_path / "s-s6.mp4")[0]
    assert json.loads((tmp_path / "s-s6.mp4.json").read_text())["output"]["seed"] == 6
    assert np.abs(a.astype(int) - b).mean() > 1
    with pytest.raises(LcmvideoError, match="--seeds: 'x' is not a list"):
        app.parse_seeds("x")
    assert app.parse_seeds("1-3,7") == [1, 2, 3, 7]


def assert_close(a, b):
    """Same frames up to float reordering across CPU thread counts (GIF is lossless per palette)."""
    fa, fb = video.read(a)[0].astype(int), video.read(b)[0].astype(int)
    assert fa.shape == fb.shape and np.abs(fa - fb).mean() < 0.5


def _two_jobs(tmp_path):
    d = tmp_path / "jobs"
    d.mkdir()
    (d / "a.yaml").write_text("prompt: a red circle\nframes: 3\nsteps: 1\nseed: 1\n")
    (d / "b.yaml").write_text("prompt: a blue square\nframes: 3\nsteps: 1\nseed: 2\nwidth: 100\n")  # invalid
    (d / "c.yaml").write_text("prompt: a blue square\nframes: 3\nsteps: 1\nseed: 2\n")
    return d


def test_local_workers_match_the_sequential_path(tmp_path):
    d = _two_jobs(tmp_path)
    (tmp_path / "seq").mkdir(), (tmp_path / "par").mkdir()
    r = CliRunner().invoke(cli, ["-q", "render", str(d / "a.yaml"), str(d / "c.yaml"), "-o", str(tmp_path / "seq"),
                                 "-f", "gif"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["render", str(d), "--workers", "2", "-o", str(tmp_path / "par"), "-f", "gif"])
    assert r.exit_code == 1 and "b.yaml: width (line 5): must be a multiple of 8" in r.stderr
    for name in ("a.gif", "c.gif"):
        assert_close(tmp_path / "seq" / name, tmp_path / "par" / name)
    assert not (tmp_path / "par" / "b.gif").exists()


def test_ray_batch_matches_the_local_path(tmp_path):
    ray = pytest.importorskip("ray")
    d = _two_jobs(tmp_path)
    (d / "b.yaml").unlink()
    (tmp_path / "seq").mkdir(), (tmp_path / "ray").mkdir()
    r = CliRunner().invoke(cli, ["-q", "render", str(d), "-o", str(tmp_path / "seq"), "-f", "gif"])
    assert r.exit_code == 0, r.output
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        r = CliRunner().invoke(cli, ["render", str(d), "--ray", "-o", str(tmp_path / "ray"), "-f", "gif"])
    finally:
        ray.shutdown()
    assert r.exit_code == 0, r.output
    for name in ("a.gif", "c.gif"):
        assert_close(tmp_path / "seq" / name, tmp_path / "ray" / name)


def test_the_api_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "api.py"
    r = subprocess.run([sys.executable, str(example), str(tmp_path / "t.mp4")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "with 1 model load" in r.stdout
    assert video.read(tmp_path / "t.mp4")[0].shape[0] == 24


def test_changing_the_motion_module_does_not_reread_the_base(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from lcmvideo.models import loader

    reads = []
    real = loader._load_base
    monkeypatch.setattr(loader, "_load_base", lambda ref, *a: (reads.append(ref.path), real(ref, *a))[1])
    shutil.copytree(tiny_dir / "motion_adapter", tmp_path / "mm")
    base = dict(model=str(tiny_dir), lcm_lora=str(tiny_dir / "lcm_lora"))
    session = lcmvideo.Session(**base, motion=str(tiny_dir / "motion_adapter"))
    a = session.render(prompt="a", frames=4, steps=1, seed=1)
    b = session.render(prompt="a", frames=4, steps=1, seed=1, motion=str(tmp_path / "mm"))
    c = session.render(prompt="a", frames=4, steps=1, seed=1, lcm_lora="none")
    assert session.loads == 3 and len(reads) == 1  # three model sets, the base read once
    assert np.array_equal(a, b)  # same weights from another folder: same frames
    assert not np.array_equal(a, c)  # the fused LCM-LoRA of the first set did not leak into the cached base


def test_a_sessions_model_renders_a_settings_object_and_leaves_it_as_it_was(tiny_dir, tmp_path):
    """`Session(model=X).render(settings)` renders with X (not the schedule's or the embedded default),
    and resolving the seed, size and noise happens on a copy: the caller's Settings is unchanged."""
    import copy
    import shutil

    from safetensors.torch import load_file, save_file

    from lcmvideo import schedule

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    vae = other / "vae" / "diffusion_pytorch_model.safetensors"
    sd = load_file(vae)
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"] + 0.5  # a visibly brighter decoder
    save_file(sd, vae)
    s = schedule.from_text("prompt: a red circle\nframes: 4\nsteps: 1\nseed: 2\n")
    before = copy.deepcopy(s)
    session = lcmvideo.Session(model=str(other), motion=str(other / "motion_adapter"), lcm_lora=str(other / "lcm_lora"))
    frames = session.render(s)
    loaded = session.models(session.settings(s))
    assert session.loads == 1 and loaded.spec.base.path == other and not loaded.spec.embedded
    embedded = lcmvideo.Session().render(s)
    assert frames.mean() > embedded.mean() + 20
    assert s == before and s.width is None and s.seed == 2 and s.shared_noise is None
    unseeded = schedule.from_text("prompt: a red circle\nframes: 2\nsteps: 1\n")
    lcmvideo.Session().render(unseeded)
    assert unseeded.seed is None and unseeded.width is None
