"""The CLI end to end: render to every format, determinism, sidecars, errors and exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from lcmvideo.cli import cli
from lcmvideo.output import video


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, tiny_dir):
    """One MP4 render through the CLI, shared by the checks that only read it."""
    d = tmp_path_factory.mktemp("clip")
    sched = d / "hello.yaml"
    sched.write_text("prompt: a red circle moving right\nframes: 12\nwidth: 96\nheight: 64\nfps: 6\nsteps: 2\nseed: 7\n")
    r = run("render", sched, "-o", d / "hello.mp4")
    assert r.exit_code == 0, r.output
    return d / "hello.mp4"


def test_help_does_not_import_torch_or_diffusers():
    code = ("import sys\nfrom lcmvideo.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and "lcmvideo, version" in r.output


def test_mp4_has_requested_frames_size_and_fps(clip):
    frames, fps = video.read(clip)
    assert frames.shape == (12, 64, 96, 3)
    assert fps == pytest.approx(6.0)
    side = json.loads(video.sidecar_path(clip).read_text())
    assert side["output"] == {"frames": 12, "width": 96, "height": 64, "fps": 6.0, "seed": 7}
    from lcmvideo.models import embedded

    assert side["models"]["embedded"] == embedded.version()
    assert side["models"]["base"]["sha256"] and len(side["models"]["base"]["sha256"]) == 12
    assert {"torch", "diffusers", "lcmvideo"} <= set(side["versions"])
    assert video.read_metadata(clip)["settings"] == side["settings"]


def test_sidecar_rerenders_the_same_frames(clip, tmp_path):
    r = run("render", video.sidecar_path(clip), "-o", tmp_path / "again.png", "--format", "png")
    assert r.exit_code == 0, r.output
    again, _ = video.read(tmp_path / "again.png")
    first = sorted(clip.parent.glob("*.png"))  # nothing stray beside the clip
    assert not first
    # compare losslessly: render the original settings to PNG too
    r = run("render", video.sidecar_path(clip), "-o", tmp_path / "orig", "--format", "png")
    orig, _ = video.read(tmp_path / "orig")
    assert again.shape == (12, 64, 96, 3) and np.array_equal(again, orig)
    mp4, _ = video.read(clip)
    # the MP4 holds the same clip, within H.264's loss on the tiny model's noise-like pictures
    err = np.abs(mp4.astype(int) - orig.astype(int)).mean()
    shifted = np.abs(mp4.astype(int) - np.roll(orig, 3, axis=2).astype(int)).mean()
    assert err < 12 and err < 0.6 * shifted


def test_same_seed_same_frames_other_seed_differs(tmp_path):
    args = ["render", "--prompt", "a cat", "--frames", "8", "--steps", "2", "-f", "png"]
    assert run(*args, "--seed", "3", "-o", tmp_path / "a").exit_code == 0
    assert run(*args, "--seed", "3", "-o", tmp_path / "b").exit_code == 0
    assert run(*args, "--seed", "4", "-o", tmp_path / "c").exit_code == 0
    a, b, c = (video.read(tmp_path / n)[0] for n in "abc")
    assert len(list((tmp_path / "a").glob("*.png"))) == 8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_gif_output_loops_with_right_frame_count(tmp_path):
    from PIL import Image

    out = tmp_path / "x.gif"
    r = run("render", "--prompt", "a cat", "--frames", "6", "--steps", "2", "--seed", "1", "--fps", "10", "-o", out)
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.n_frames == 6 and im.info.get("loop") == 0 and im.info.get("duration") == 100


def test_random_seed_is_recorded(tmp_path):
    out = tmp_path / "r.mp4"
    r = CliRunner().invoke(cli, ["render", "--prompt", "x", "--frames", "4", "--steps", "1", "-o", str(out)])
    assert r.exit_code == 0
    seed = json.loads(video.sidecar_path(out).read_text())["output"]["seed"]
    assert isinstance(seed, int) and f"seed {seed}" in r.stderr
    assert "using the embedded" in r.stderr


def only(path):
    """Files in a folder: a failed command must leave nothing."""
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("args, code, message", [
    (["render", "{d}/missing.yaml", "-o", "{d}/o.mp4"], 2, "missing.yaml: no such schedule file"),
    (["render", "{d}/bad.yaml", "-o", "{d}/o.mp4"], 2, 'bad.yaml: keyframes."20" (line 2): frame 20 is beyond the clip'),
    (["render", "--prompt", "x", "--width", "100", "-o", "{d}/o.mp4"], 2, "--width: must be a multiple of 8"),
    (["render", "--prompt", "x", "--model", "{d}/nope.safetensors", "-o", "{d}/o.mp4"], 2,
     "--model: '{d}/nope.safetensors' is not a file"),
    (["render", "--prompt", "x", "--model", "{d}/trunc.safetensors", "--motion", "m", "--lcm-lora", "none",
      "-o", "{d}/o.mp4"], 1, "trunc.safetensors: truncated .safetensors file"),
    (["render", "--prompt", "x", "--model", "{d}/xl.safetensors", "-o", "{d}/o.mp4"], 2,
     "xl.safetensors is a SDXL base model; lcmvideo runs Stable Diffusion 1.5 models only"),
    (["render", "--prompt", "x", "-o", "{d}/no/such/dir/o.mp4"], 2, "no/such/dir"),
    (["render", "--prompt", "x", "-o", "{d}/o.avi"], 2, "o.avi"),
    (["render", "--prompt", "x", "--lora", "{d}/s.safetensors:heavy", "-o", "{d}/o.mp4"], 2,
     "--lora: '{d}/s.safetensors:heavy': the weight after ':' must be a number"),
    (["render", "-o", "{d}/o.mp4"], 2, "give a SCHEDULE_FILE or --prompt"),
])
def test_errors_one_line_exit_code_no_output(tmp_path, args, code, message):
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "w"
    d.mkdir()
    (d / "bad.yaml").write_text("keyframes:\n  20: a\n")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(d / "trunc.safetensors"))
    (d / "trunc.safetensors").write_bytes((d / "trunc.safetensors").read_bytes()[:-100])
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(2, 2)}, str(d / "xl.safetensors"))
    before = only(d)
    r = CliRunner().invoke(cli, [a.format(d=d) for a in args])
    assert r.exit_code == code, r.output
    err = r.stderr.strip()
    assert message.format(d=d) in err
    assert len(err.splitlines()) == 1 or "Usage:" in err, err
    assert "Traceback" not in r.output
    assert only(d) == before


def test_interrupt_leaves_previous_output_intact(tmp_path, monkeypatch, clip):
    from lcmvideo.pipeline import text2video

    out = tmp_path / "keep.mp4"
    out.write_bytes(clip.read_bytes())
    before = out.read_bytes()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(text2video, "decode", interrupted)
    r = CliRunner().invoke(cli, ["render", "--prompt", "x", "--frames", "4", "--steps", "1", "-o", str(out)])
    assert r.exit_code == 130 and "interrupted" in r.stderr
    assert out.read_bytes() == before and only(tmp_path) == ["keep.mp4"]


def test_models_command_lists_sources(tmp_path):
    r = run("models", "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    roles = {m["role"]: m for m in info["models"]}
    assert roles["base"]["source"] == "embedded default" and info["embedded"] is True
    assert roles["lcm_lora"]["layout"] == "peft"
    r = run("models")
    assert "base" in r.output and "embedded default" in r.output


def test_hf_cache_env_is_respected_in_a_fresh_process(tmp_path, tiny_dir):
    import layouts

    hub = tmp_path / "hub"
    layouts.make_hf_cache(hub, "someone/tiny-sd15", tiny_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(hub)}
    out = subprocess.run([sys.executable, "-m", "lcmvideo.cli", "models", "--json", "--model", "someone/tiny-sd15",
                          "--motion", str(tiny_dir / "motion_adapter"), "--lcm-lora", "none"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    base = json.loads(out.stdout)["models"][0]
    assert base["path"].startswith(str(hub)) and base["layout"] == "diffusers"
