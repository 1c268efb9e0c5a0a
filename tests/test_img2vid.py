"""A clip from a picture (init_image): plumbing on the random twin; what it means is checked on
the shapes family in tests/test_shapes_img2vid.py."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import render_settings
from PIL import Image

from lcmvideo import schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.output import video
from lcmvideo.pipeline import img2vid, text2video
from lcmvideo.schedule import FreeInit
from lcmvideo.shapes import world


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "red.png"
    Image.fromarray(world.draw(world.Scene("circle", "red", "black", 20, 40, 9))).save(path)
    return path


def with_picture(path, strength=0.7, **kw):
    s = render_settings(frames=kw.pop("frames", 8), steps=2, seed=kw.pop("seed", 4), **kw)
    s.init_image, s.init_strength = str(path), strength
    return s


def test_weights_fall_over_the_clip_as_strength_says():
    w = img2vid.weights(16, 0.7)
    assert w[0] == 1 and all(a > b for a, b in zip(w, w[1:])) and w[-1] == pytest.approx(0.4)
    assert img2vid.weights(16, 1.0) == [1.0] * 16
    assert img2vid.weights(9, 0.0)[4:] == [0.0] * 5
    assert img2vid.weights(9, 0.25)[6:] == [0.0] * 3 and img2vid.weights(1, 0.3) == [1.0]
    assert img2vid.start_fraction(0.7) == pytest.approx(0.3) and img2vid.start_fraction(1.0) > 0


def test_strength_zero_is_no_picture_and_the_picture_changes_the_clip(tiny_models, picture):
    plain = text2video.render(tiny_models, render_settings(frames=8, steps=2, seed=4))
    assert np.array_equal(text2video.render(tiny_models, with_picture(picture, 0.0)), plain)
    on = text2video.render(tiny_models, with_picture(picture))
    assert on.shape == plain.shape == (8, 64, 64, 3)
    assert np.array_equal(text2video.render(tiny_models, with_picture(picture)), on)  # same seed, same clip
    assert np.abs(on.astype(int) - plain).mean() > 1
    stronger = text2video.render(tiny_models, with_picture(picture, 0.95))
    assert np.abs(stronger.astype(int) - on).mean() > 1


def test_the_picture_is_fitted_to_the_clip(tiny_models, tmp_path):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, :32] = (230, 40, 40)  # red on the left third: cropped away, kept by padding
    Image.fromarray(wide).save(tmp_path / "wide.png")
    s = schedule.finish(with_picture(tmp_path / "wide.png", init_fit="crop", width=64, height=64))
    crop = img2vid.picture(s)
    pad = img2vid.picture(schedule.finish(with_picture(tmp_path / "wide.png", init_fit="pad", width=64, height=64)))
    assert crop.shape == pad.shape == (64, 64, 3)
    assert crop[:, :8].max() < 250 and pad[:, :8].max() > 200 and pad[0].max() == 0  # bars above and below
    frames = text2video.render(tiny_models, with_picture(tmp_path / "wide.png", init_fit="pad", frames=4))
    assert frames.shape == (4, 64, 64, 3)


def test_with_free_init_and_windows(tiny_models, picture):
    s = with_picture(picture, frames=10)
    s.context.length, s.context.overlap = 6, 2
    one = text2video.render(tiny_models, s)
    s.free_init = FreeInit(iterations=2)
    two = text2video.render(tiny_models, s)
    assert two.shape == one.shape == (10, 64, 64, 3) and np.abs(two.astype(int) - one).mean() > 0.5


def test_schedule_keys_paths_and_errors(tmp_path, picture):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "clip.yaml"
    f.write_text("prompt: x\ninit_image: ../red.png\ninit_strength: 0.4\ninit_fit: pad\n")
    s = schedule.load(f)
    assert s.init_image == str(picture.resolve()) and (s.init_strength, s.init_fit) == (0.4, "pad")
    assert schedule.Settings().init_strength is None and schedule.Settings().init_image is None
    assert schedule.init_strength_of(schedule.Settings()) == 0.7  # the default without SparseCtrl
    for text, msg in [("init_strength: 1.5", r"init_strength \(line 2\): must be at most 1.0"),
                      ("init_fit: zoom", r"init_fit \(line 2\): expected one of crop, pad, stretch"),
                      ("init_image: 3", r"init_image \(line 2\): expected text")]:
        with pytest.raises(LcmvideoError, match=msg):
            schedule.from_text(f"prompt: x\n{text}\n")
    with pytest.raises(LcmvideoError, match="--init-strength: expected a number from 0 to 1"):
        schedule.from_source(None, prompt="x", init_strength=2.0)


def test_cli_render_sidecar_and_bad_images(tmp_path, picture, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["-q", "render", "-p", "a blue square", "--frames", "4", "--steps", "2", "--seed", "3"]
    r = CliRunner().invoke(cli, [*base, "--init-image", "red.png", "--init-strength", "0.8", "-o", "a.mp4"])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "a.mp4.json").read_text())
    assert side["settings"]["init_image"] == str(picture.resolve()) and side["settings"]["init_strength"] == 0.8
    r = CliRunner().invoke(cli, ["-q", "render", "a.mp4.json", "-o", "b.mp4"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(video.read(tmp_path / "a.mp4")[0], video.read(tmp_path / "b.mp4")[0])
    (tmp_path / "broken.png").write_text("not a picture")
    for name, says in [("missing.png", "no such image file"), ("broken.png", "not a readable image")]:
        r = CliRunner().invoke(cli, [*base, "--init-image", name, "-o", "c.mp4"])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "init_image (--init-image)" in lines[0] and says in lines[0]
        assert "Traceback" not in r.output and not (tmp_path / "c.mp4").exists()
