"""The shipped shapes-world family means what its prompts say (read back by the analyser)."""

import numpy as np
import pytest
import torch

from lcmvideo.models import embedded
from lcmvideo.output import video
from lcmvideo.shapes import analyse, world
from training.shapes import quality

trained = pytest.mark.skipif(not embedded.has_shipped(), reason="the shapes weights are not shipped in this checkout")
# the trained family, as a user gets it (tests/conftest.py picks the twin); `session` is on it too
pytestmark = pytest.mark.usefixtures("shapes_family")


@pytest.fixture(scope="module")
def teacher(shapes_family):
    from lcmvideo.api import Session

    s = Session(lcm_lora="none")
    return s.models(s.settings(prompt="x"))


def clip(session, prompt, seed, frames=16, **kw):
    return session.render(prompt=prompt, frames=frames, seed=seed, steps=4, **kw)


def test_the_world_and_analyser_agree():
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = world.sample(rng, 16)
        frames = world.clip(s)
        for f in (0, 15):
            r = analyse.read(frames[f])
            x, y = s.at(f)
            assert r.colour == s.colour and abs(r.x - x) < 1.5 and abs(r.y - y) < 1.5


@trained
def test_prompt_colour_reaches_the_picture(session):
    """Every colour x shape prompt, two seeds, 8-frame clips: >= 90 % of frames per colour and per shape."""
    by_colour, by_shape = {}, {}
    for prompt, colour, seed in quality.prompts_and_truth(seeds_per_prompt=2):
        shape = prompt.split()[-1]
        ok = [analyse.read(f).colour == colour for f in clip(session, prompt, seed, frames=8)]
        by_colour.setdefault(colour, []).extend(ok)
        by_shape.setdefault(shape, []).extend(ok)
    rates = {k: float(np.mean(v)) for k, v in {**by_colour, **by_shape}.items()}
    assert set(rates) == set(world.COLOURS) | set(world.SHAPES)
    assert all(r >= 0.9 for r in rates.values()), rates


@trained
def test_prompt_travel_red_to_blue(session):
    from lcmvideo.schedule import from_text

    s = from_text("frames: 16\nsteps: 4\nseed: 11\nkeyframes:\n  0: a red circle on a black background\n"
                  "  15: a blue circle on a black background\n")
    frames = session.render(s)
    reads = analyse.read_clip(frames)
    assert reads[0].colour == "red" and reads[-1].colour == "blue"
    blue = [r.shares.get("blue", 0.0) for r in reads]
    assert all(b2 >= b1 - 0.15 for b1, b2 in zip(blue, blue[1:])), blue
    assert blue[-1] - blue[0] > 0.7


# Known misses of the shipped weights (README, "Training status"), kept at the bar the family is
# meant to meet; strict, so the day a retrained family meets it the marker has to go.
MOTION_NOT_LEARNT = pytest.mark.xfail(strict=True, reason="motion words are not learnt: every word gives one clip, "
                                                           "whose shape wanders 9-12 px")


@trained
@MOTION_NOT_LEARNT
@pytest.mark.parametrize("seed", [3, 4])
def test_motion_words_move_the_shape(session, seed):
    """Together, as one claim: apart, 'moving right' passes by luck where the seed's drift goes right."""
    right = analyse.read_clip(clip(session, "a white square on a black background, moving right", seed))
    xs = [r.x for r in right]
    assert xs[-1] - xs[0] > 8, xs
    still = analyse.read_clip(clip(session, "a white square on a black background, still", seed))
    pos = np.array([(r.x, r.y) for r in still])
    assert np.abs(pos - pos[0]).max() < 4, pos


@trained
def test_first_command_renders_what_hello_yaml_says(tmp_path):
    """The README's first command on the embedded default: red circle at frame 0, blue by frame 15."""
    from pathlib import Path

    from click.testing import CliRunner

    from lcmvideo.cli import cli

    hello = Path(__file__).parent.parent / "prompts" / "hello.yaml"
    r = CliRunner().invoke(cli, ["-q", "render", str(hello), "-o", str(tmp_path / "hello.mp4")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    frames, fps = video.read(tmp_path / "hello.mp4")
    assert frames.shape == (16, 64, 64, 3) and fps == 8
    reads = analyse.read_clip(frames)
    assert (reads[0].colour, reads[-1].colour) == ("red", "blue"), [r.colour for r in reads]


def _maps(folder, points):
    from PIL import Image

    folder.mkdir()
    for i, (x, y) in enumerate(points):
        Image.fromarray(world.position_map(x, y)).save(folder / f"{i:04d}.png")
    return folder


@trained
def test_controlnet_map_places_the_shape(session, tmp_path):
    from lcmvideo.schedule import ControlSpec

    fixed = [(20, 44)] * 16
    moving = [(12 + 2.5 * i, 30) for i in range(16)]
    for name, points in (("fixed", fixed), ("moving", moving)):
        spec = ControlSpec(images=str(_maps(tmp_path / name, points)))
        frames = session.render(prompt="a green triangle", frames=16, seed=5, steps=4, controlnet=(spec,))
        reads = analyse.read_clip(frames)
        near = [np.hypot(r.x - x, r.y - y) <= quality.TOLERANCE_PX for r, (x, y) in zip(reads, points)]
        assert np.mean(near) >= 0.9, (name, [(round(r.x), round(r.y)) for r in reads])


@pytest.fixture(scope="module")
def lcm_and_teacher(session, teacher):
    """Pictures of every colour x shape from the same noise, by (sampler, steps): LCM at 1 and 2 steps,
    the same LoRA with TCD (gamma 0) at 4, the teacher at 1, 2 and 50; and the asked colours."""
    cases = quality.prompts_and_truth(seeds_per_prompt=1)
    prompts, seeds, colours = [p for p, _, _ in cases], [s for _, _, s in cases], [c for _, c, _ in cases]
    student = session.models(session.settings(prompt="x"))
    lcm, tcd = quality.image_pipeline(student, "lcm"), quality.image_pipeline(student, "tcd")
    ddim = quality.image_pipeline(teacher, "ddim")
    runs = {("lcm", n): quality.generate(lcm, prompts, seeds, n, 1.0) for n in (1, 2)}
    runs["tcd", 4] = quality.generate(tcd, prompts, seeds, 4, 1.0)  # the pipeline's eta 0: TCD's gamma 0
    for n in (1, 2, 50):
        runs["teacher", n] = quality.generate(ddim, prompts, seeds, n, quality.TEACHER_GUIDANCE)
    return runs, colours


@trained
def test_one_lcm_step_does_what_one_teacher_step_cannot(lcm_and_teacher):
    """LCM's point on this world: a right picture in one step, where the teacher's is a blur."""
    runs, colours = lcm_and_teacher
    rates = quality.colour_rate(runs["lcm", 1], colours), quality.colour_rate(runs["teacher", 1], colours)
    assert rates[0] >= 0.9 and rates[1] < 0.5, rates


@trained
@pytest.mark.parametrize("steps", [1, 2])
def test_lcm_agrees_with_the_fifty_step_teacher_more_than_the_teacher_itself_at_few_steps(lcm_and_teacher, steps):
    """Where LCM pays here: at 1 and 2 steps. (At 4 steps the teacher, with zero terminal SNR and trailing
    steps, already agrees ~97 %, and LCMScheduler's fresh re-noising costs layout: docs/shapes.md.)"""
    runs, _ = lcm_and_teacher
    t50 = runs["teacher", 50]
    lcm, teacher = quality.agreement(runs["lcm", steps], t50), quality.agreement(runs["teacher", steps], t50)
    assert lcm > teacher, (lcm, teacher)


@trained
def test_tcd_without_fresh_noise_agrees_with_the_fifty_step_teacher_at_four_steps(lcm_and_teacher):
    """The same LCM-LoRA sampled by TCDScheduler with gamma 0 keeps the layout LCMScheduler's re-noising loses."""
    runs, _ = lcm_and_teacher
    assert quality.agreement(runs["tcd", 4], runs["teacher", 50]) >= 0.8


@pytest.fixture(scope="module")
def restyled(session, tmp_path_factory):
    """A red circle moving right restyled as 'a blue circle' at strength 0.6: (reads, the source's reads)."""
    from lcmvideo.pipeline import restyle

    tmp = tmp_path_factory.mktemp("restyle")
    src = world.clip(world.Scene("circle", "red", "black", 16, 32, 9, "moving right", 2.0), 16)
    video.write(src, tmp / "src", 8.0, "png")
    out, _, _ = session.restyle(tmp / "src", prompt="a blue circle", strength=0.6, seed=2, steps=4,
                                options=restyle.Options(report=False), output=tmp / "o.mp4")
    return analyse.read_clip(out), analyse.read_clip(src)


@trained
def test_restyle_changes_the_colour(restyled):
    reads, _ = restyled
    assert np.mean([r.colour == "blue" for r in reads]) >= 0.9


@trained
@pytest.mark.xfail(strict=True, reason="the noise that lets the colour change also erases the place on 8x8 latents")
def test_restyle_keeps_the_track(restyled):
    reads, truth = restyled
    assert max(np.hypot(a.x - b.x, a.y - b.y) for a, b in zip(reads, truth)) <= quality.TOLERANCE_PX


@trained
@pytest.mark.parametrize("mode", ["frames", "animatediff"])
def test_restyle_held_by_the_inputs_position_map_keeps_the_track(session, tmp_path, mode):
    """What real restyling does to keep structure: a ControlNet on a map of each input frame
    (`--controlnet embedded position`). Same clip, prompt, strength and seed as the plain case above."""
    from lcmvideo import schedule
    from lcmvideo.pipeline import restyle
    from lcmvideo.schedule import ControlSpec

    src = world.clip(world.Scene("circle", "red", "black", 16, 32, 9, "moving right", 2.0), 16)
    video.write(src, tmp_path / "src", 8.0, "png")
    out, _, _ = session.restyle(tmp_path / "src", prompt="a blue circle", strength=0.6, seed=2, steps=4,
                                options=restyle.Options(report=False, mode=mode), output=tmp_path / "o.mp4",
                                controlnet=(ControlSpec(position_from=schedule.INPUT),))
    reads, truth = analyse.read_clip(out), analyse.read_clip(src)
    assert np.mean([r.colour == "blue" for r in reads]) >= 0.9
    assert max(np.hypot(a.x - b.x, a.y - b.y) for a, b in zip(reads, truth)) <= quality.TOLERANCE_PX


@trained
def test_live_position_map_places_the_shape(session):
    """`live --controlnet embedded --control-map position`: each stylized frame keeps its input's place."""
    from lcmvideo import app
    from lcmvideo.pipeline import img2img

    models = session.models(session.settings(prompt="x"))
    controls = app.live_controls(models, "embedded", "position_from", 64, 64)
    sty = img2img.Stylizer(models, steps=2, seed=0)
    src = world.clip(world.Scene("circle", "red", "black", 14, 32, 9, "moving right", 2.5), 16)
    reads = [analyse.read(sty(f, "a blue circle", 0.6, controls=[(c, 0) for c in controls(f)]).image) for f in src]
    truth = analyse.read_clip(src)
    assert np.mean([r.colour == "blue" for r in reads]) >= 0.9
    assert np.mean([np.hypot(a.x - b.x, a.y - b.y) <= quality.TOLERANCE_PX for a, b in zip(reads, truth)]) >= 0.9


def test_velocity_and_direction_read_the_world_back():
    for motion in world.MOTIONS:
        scene = world.Scene("circle", "green", "gray", 32, 32, 8, motion, 0.0 if motion == "still" else 1.5)
        v = quality.velocity(analyse.read_clip(world.clip(scene)))
        dx, dy = world.MOTIONS[motion]
        assert np.allclose(v, (1.5 * dx, 1.5 * dy), atol=0.1), (motion, v)
        assert [m for m in world.MOTIONS if quality.goes_the_right_way(v, m)] == [motion]
    empty = np.zeros((16, 64, 64, 3), np.uint8)
    assert quality.velocity(analyse.read_clip(empty)) is None


def test_lcm_pictures_depend_on_their_seed_alone(tiny_models):
    """LCM re-noises between steps: that noise must come from the seed too, or agreement rates wander."""
    pipe = quality.image_pipeline(tiny_models, "lcm")
    prompts, seeds = ["a red circle", "a blue square", "a green triangle"], [5, 6, 7]
    batch = quality.generate(pipe, prompts, seeds, 4, 1.0)
    torch.manual_seed(123)  # the global generator must not matter
    assert np.array_equal(quality.generate(pipe, prompts, seeds, 4, 1.0), batch)
    alone = quality.generate(pipe, prompts[1:2], seeds[1:2], 4, 1.0)
    assert np.abs(alone.astype(int) - batch[1:2]).max() <= 2  # float sums differ with the batch size, no more


def test_captions_and_position_maps():
    s = world.Scene("triangle", "yellow", "gray", 20, 30, 8, "moving up", 2.0)
    assert world.caption(s) == "a yellow triangle on a gray background, moving up"
    short = {world.caption(s, np.random.default_rng(i)) for i in range(40)}
    assert "a yellow triangle" in short and len(short) == 4
    m = world.position_map(20, 30)
    ys, xs = np.nonzero(m[..., 0] > 128)
    assert abs(xs.mean() - 20) < 0.5 and abs(ys.mean() - 30) < 0.5


def test_training_is_deterministic_and_resumes(tmp_path, monkeypatch):
    """A stage killed after a checkpoint and resumed ends with the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from training.shapes import train

    monkeypatch.setitem(train.STEPS, "vae", 4)
    monkeypatch.setattr(train, "CHECKPOINT_EVERY", 1)
    train.main([str(tmp_path / "a"), "--stage", "vae", "--threads", "1"])
    real, calls = train.Trainer.images, {"n": 0}

    def dying(self, n, rng):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, n, rng)

    monkeypatch.setattr(train.Trainer, "images", dying)
    with pytest.raises(KeyboardInterrupt):
        train.main([str(tmp_path / "b"), "--stage", "vae", "--threads", "1"])
    monkeypatch.setattr(train.Trainer, "images", real)
    train.main([str(tmp_path / "b"), "--stage", "vae", "--threads", "1"])
    assert "resumed at step 2" in (tmp_path / "b" / "vae.log").read_text()
    a = load_file(tmp_path / "a" / "vae" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "vae" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
