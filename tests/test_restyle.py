"""Restyle: input selection, audio, determinism, strength travel, resume, flicker, errors."""

import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from lcmvideo import schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.output import flow, video
from lcmvideo.pipeline import control, img2img, restyle
from lcmvideo.shapes import analyse, world


def moving_clip(n=8, size=64, speed=2.0):
    return world.clip(world.Scene("circle", "red", "black", 14, size / 2, 8, "moving right", speed), n)


def write_mp4(path, frames, fps=8.0, audio=False):
    video.write(frames, path, fps, "mp4")
    if audio:
        import imageio_ffmpeg

        tmp = path.with_name("a" + path.name)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(path), "-f", "lavfi", "-i",
                        f"sine=frequency=440:duration={len(frames) / fps}", "-c:v", "copy", "-c:a", "aac",
                        "-shortest", str(tmp)], check=True)
        tmp.replace(path)
    return path


def streams(path):
    import av

    with av.open(str(path)) as c:
        return sorted(s.type for s in c.streams)


@pytest.fixture(scope="module")
def session(tiny_dir):
    from lcmvideo.api import Session

    return Session()


@pytest.fixture(scope="module")
def src_png(tmp_path_factory):
    d = tmp_path_factory.mktemp("src") / "frames"
    video.write(moving_clip(), d, 8.0, "png")
    return d


def run(session, src, out, opts=None, **kw):
    kw.setdefault("prompt", "a blue circle")
    kw.setdefault("seed", 3)
    kw.setdefault("steps", 2)
    return session.restyle_to_file(src, out, options=opts or restyle.Options(report=False), **kw)


def test_output_follows_input_and_selection(session, tmp_path):
    src = write_mp4(tmp_path / "in.mp4", moving_clip(12), fps=12.0)
    out = run(session, src, tmp_path / "out.mp4", restyle.Options(every=2, start="2", max_frames=4, report=False))
    frames, fps = video.read(out)
    assert frames.shape == (4, 64, 64, 3)
    assert fps == pytest.approx(6.0)
    meta = json.loads((tmp_path / "out.mp4.json").read_text())
    assert meta["input"]["start_s"] == pytest.approx(2 / 12, abs=1e-3)
    assert not restyle.work_dir(out).exists()  # cleaned after the final encode


def test_size_rule_keeps_aspect_and_multiples_of_8():
    assert restyle.size_for(1920, 1080, 512, None, None) == (904, 512)
    assert restyle.size_for(640, 480, 64, 96, None) == (96, 72)
    assert restyle.size_for(640, 480, 64, None, None) == (80, 64)


def test_time_positions(tmp_path, session):
    src = write_mp4(tmp_path / "in.mp4", moving_clip(16), fps=8.0)
    out = run(session, src, tmp_path / "o.gif", restyle.Options(start="0.5s", end="1.25s", report=False))
    assert len(video.read(out)[0]) == 6  # frames 4..9


@pytest.mark.parametrize("keep", [True, False])
def test_audio_is_carried_or_dropped(session, tmp_path, keep):
    src = write_mp4(tmp_path / "in.mp4", moving_clip(8), audio=True)
    assert streams(src) == ["audio", "video"]
    out = run(session, src, tmp_path / "out.mp4", restyle.Options(audio=keep, report=False))
    assert streams(out) == (["audio", "video"] if keep else ["video"])
    assert len(video.read(out)[0]) == 8
    assert json.loads((tmp_path / "out.mp4.json").read_text())["output"]["audio"] is keep


def test_same_seed_same_output_and_strength_zero_is_identity(session, src_png, tmp_path):
    a = video.read(run(session, src_png, tmp_path / "a"))[0]
    b = video.read(run(session, src_png, tmp_path / "b"))[0]
    c = video.read(run(session, src_png, tmp_path / "c", seed=4))[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    z = video.read(run(session, src_png, tmp_path / "z", strength=0.0))[0]
    assert np.array_equal(z, video.read(src_png)[0])


def test_strength_travel_reaches_each_frame(session, src_png, tmp_path, monkeypatch):
    seen = {}
    real = img2img.Stylizer.__call__

    def spy(self, image, prompt, strength, index=0, **kw):
        seen[index] = strength
        return real(self, image, prompt, strength, index=index, **kw)

    monkeypatch.setattr(img2img.Stylizer, "__call__", spy)
    sched = tmp_path / "s.yaml"
    sched.write_text("keyframes:\n  0: {prompt: a blue circle, strength: 0.2}\n  7: {prompt: a blue circle, strength: 0.9}\n")
    session.restyle_to_file(src_png, tmp_path / "o", source=sched, options=restyle.Options(report=False), seed=1, steps=2)
    assert sorted(seen) == list(range(8))
    assert seen[0] == pytest.approx(0.2) and seen[7] == pytest.approx(0.9)
    assert seen[3] == pytest.approx(0.2 + 0.7 * 3 / 7)


def test_warping_error_orders_smooth_and_noisy():
    clip = moving_clip(10)
    noisy = np.clip(clip.astype(int) + np.random.default_rng(0).integers(-40, 41, clip.shape), 0, 255).astype(np.uint8)
    smooth = flow.warping_error(clip)
    rough = flow.warping_error(noisy, clip)
    assert smooth < 0.01
    assert rough > smooth + 0.05
    assert flow.frame_difference(noisy) > flow.frame_difference(clip)


def test_fixed_noise_flickers_less_than_fresh_noise(session, src_png, tmp_path):
    src = video.read(src_png)[0]
    fixed = video.read(run(session, src_png, tmp_path / "f", strength=0.6))[0]
    fresh = video.read(run(session, src_png, tmp_path / "n", restyle.Options(fixed_noise=False, report=False),
                           strength=0.6))[0]
    assert flow.warping_error(fixed, src) < 0.8 * flow.warping_error(fresh, src)


def test_blending_lowers_flicker(session, src_png, tmp_path):
    src = video.read(src_png)[0]
    plain = video.read(run(session, src_png, tmp_path / "p", restyle.Options(fixed_noise=False, report=False),
                           strength=0.6))[0]
    blended = video.read(run(session, src_png, tmp_path / "b",
                             restyle.Options(fixed_noise=False, blend=0.5, report=False), strength=0.6))[0]
    assert flow.warping_error(blended, src) < flow.warping_error(plain, src)


@pytest.mark.parametrize("opts", [restyle.Options(blend=0.4, report=False),
                                  restyle.Options(mode="animatediff", report=False)], ids=["frames", "animatediff"])
def test_resume_after_interrupt_equals_uninterrupted(session, src_png, tmp_path, monkeypatch, opts):
    whole = video.read(run(session, src_png, tmp_path / "whole", opts))[0]
    calls = {"n": 0}
    if opts.mode == "frames":
        target, name = img2img.Stylizer, "__call__"
    else:
        from lcmvideo.pipeline import text2video as target

        name = "denoise"
    real = getattr(target, name)

    def dying(*a, **kw):
        if opts.mode == "animatediff":  # die after the first finished step
            step_cb = kw["on_step"]

            def cb(step, lat, gen):
                step_cb(step, lat, gen)
                raise KeyboardInterrupt
            kw["on_step"] = cb
            return real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(target, name, dying)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(session, src_png, out, opts)
    assert not out.exists() and restyle.work_dir(out).exists()
    monkeypatch.setattr(target, name, real)
    from lcmvideo.errors import LcmvideoError

    with pytest.raises(LcmvideoError, match="--resume"):
        run(session, src_png, out, opts)
    opts_resume = restyle.Options(**{**vars(opts), "resume": True})
    resumed = video.read(run(session, src_png, out, opts_resume))[0]
    if opts.mode == "frames":
        assert np.array_equal(resumed, whole)
    else:  # the same latents and generator state; CPU kernels may round the last step differently
        assert np.abs(resumed.astype(int) - whole).max() <= 1
    if opts.mode == "frames":
        assert calls["n"] == 4  # frames 0-2 were kept, not redone


def test_animatediff_mode_matches_diffusers_video_to_video(session, src_png):
    import torch
    from diffusers import AnimateDiffVideoToVideoPipeline
    from PIL import Image

    src = video.read(src_png)[0]
    ours, _, _ = session.restyle(src_png, options=restyle.Options(mode="animatediff"), output=src_png.parent / "x.mp4",
                                 prompt="a blue circle", seed=5, steps=2, strength=0.5)
    models = session._models
    pipe = AnimateDiffVideoToVideoPipeline.from_pipe(models.pipe)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(video=[Image.fromarray(f) for f in src], prompt="a blue circle", strength=0.5, num_inference_steps=2,
               enforce_inference_steps=True, guidance_scale=1.0, generator=torch.Generator().manual_seed(5),
               output_type="np").frames[0]
    ref = (ref * 255).round().astype(np.int16)
    assert np.abs(ours.astype(np.int16) - ref).max() <= 2


def test_stylizer_matches_diffusers_img2img(session, src_png):
    import torch
    from PIL import Image

    models = session._models or session.models(session.settings(prompt="x"))
    frame = video.read(src_png)[0][2]
    sty = img2img.Stylizer(models, steps=3, guidance=1.5, seed=9, negative_prompt="green")
    ours = sty(frame, "a blue circle", 0.6).image
    pipe = img2img.img2img_pipeline(models)
    ref = pipe(prompt="a blue circle", negative_prompt="green", image=Image.fromarray(frame), strength=0.6,
               num_inference_steps=img2img.schedule_length(sty.scheduler, 3, 0.6), guidance_scale=1.5,
               generator=torch.Generator().manual_seed(9), output_type="np").images[0]
    assert np.abs(ours.astype(int) - (ref * 255).round()).max() <= 1
    assert sty.encodes == 1
    sty(frame, "a blue circle", 0.6)
    assert sty.encodes == 1  # the prompt is encoded once


@pytest.mark.parametrize("content,code,message", [
    (b"", 1, "could not read video"),
    (b"not a video at all" * 50, 1, "could not read video"),
])
def test_bad_input_is_one_line_and_no_output(tmp_path, content, code, message, tiny_dir):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    out = tmp_path / "out.mp4"
    r = CliRunner().invoke(cli, ["restyle", str(bad), "-p", "x", "-o", str(out)])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not out.exists() and not restyle.work_dir(out).exists()


def _counting(monkeypatch, count=...):
    """Spy on restyle's reader: how many frames were decoded; `count` overrides the container's count."""
    pulled, real = [], video.open_frames

    def spying(path):
        frames, fps, n = real(path)

        def counted():
            for f in frames:
                pulled.append(1)
                yield f
        return counted(), fps, n if count is ... else count

    monkeypatch.setattr(video, "open_frames", spying)
    return pulled


def test_only_the_selected_span_is_decoded(tmp_path, monkeypatch):
    """A few frames of a long input cost a few frames: decoding stops at the last selected one."""
    src = write_mp4(tmp_path / "in.mp4", moving_clip(40, speed=1.0), fps=8.0)
    everything, _ = video.read(src)
    pulled = _counting(monkeypatch)
    got = restyle.load_source(src, restyle.Options(start="10", every=3, max_frames=3), 64, None, None)
    assert len(pulled) == 17  # frames 0-16; 10, 13 and 16 are kept
    assert np.array_equal(got.frames, everything[[10, 13, 16]])
    pulled.clear()
    got = restyle.load_source(src, restyle.Options(start="1s", end="2s"), 64, None, None)
    assert len(pulled) == 16 and len(got.frames) == 8 and got.start_s == 1.0


def test_bounds_are_checked_where_the_container_has_no_frame_count(tmp_path, monkeypatch):
    src = write_mp4(tmp_path / "in.mp4", moving_clip(12), fps=8.0)
    _counting(monkeypatch, count=None)
    with pytest.raises(LcmvideoError, match=r"--end: 20 is beyond the input's 12 frames"):
        restyle.load_source(src, restyle.Options(end="20"), 64, None, None)
    with pytest.raises(LcmvideoError, match="nothing selected"):
        restyle.load_source(src, restyle.Options(start="12"), 64, None, None)
    assert len(restyle.load_source(src, restyle.Options(start="4"), 64, None, None).frames) == 8


def test_missing_input_and_bad_positions(tmp_path, src_png, tiny_dir):
    r = CliRunner().invoke(cli, ["restyle", str(tmp_path / "nope.mp4"), "-p", "x"])
    assert r.exit_code == 2 and "nope.mp4" in r.output
    r = CliRunner().invoke(cli, ["restyle", str(src_png), "-p", "x", "--start", "soon", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--start" in r.output
    r = CliRunner().invoke(cli, ["restyle", str(src_png), "-p", "x", "--start", "6", "--end", "3",
                                 "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nothing selected" in r.output
    assert not (tmp_path / "o").exists()


def test_flicker_command(tmp_path):
    clip = moving_clip(8)
    video.write(clip, tmp_path / "c.mp4", 8.0, "mp4")
    r = CliRunner().invoke(cli, ["flicker", str(tmp_path / "c.mp4"), "--reference", str(tmp_path / "c.mp4"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["warping_error"] < 0.02 and rep["source_warping_error"] == rep["warping_error"]


def test_openpose_source_conditions_on_poses_of_the_input(session, src_png, tmp_path, monkeypatch):
    """`--controlnet MODEL openpose`: every selected input frame's pose is drawn and conditions the net."""
    from lcmvideo import schedule
    from lcmvideo.pipeline import pose
    from lcmvideo.schedule import ControlSpec

    seen = []

    class FakePose:  # MediaPipePose's interface: frame -> people (normalised COCO-18)
        def __call__(self, frame):
            seen.append(frame.shape)
            p = np.zeros((18, 3))
            p[:, 0], p[:, 1], p[:, 2] = np.linspace(0.2, 0.8, 18), np.linspace(0.1, 0.9, 18), 1.0
            return [p]

        def close(self):
            pass

    monkeypatch.setattr(pose, "MediaPipePose", FakePose)
    plain = video.read(run(session, src_png, tmp_path / "plain"))[0]
    posed = video.read(run(session, src_png, tmp_path / "posed",
                           controlnet=(ControlSpec(model=None, pose_from=schedule.INPUT),)))[0]
    assert len(seen) == 8 and seen[0] == (64, 64, 3)
    assert np.abs(posed.astype(int) - plain).mean() > 1.0


def test_missing_pose_extra_is_a_usage_error_and_leaves_nothing(tmp_path, src_png, monkeypatch, tiny_dir):
    import builtins

    real_import = builtins.__import__

    def no_mediapipe(name, *a, **kw):
        if name == "mediapipe":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(cli, ["restyle", str(src_png), "-p", "x", "--controlnet", "embedded", "openpose",
                                 "-o", str(out)])
    assert r.exit_code == 2 and "lcmvideo[pose]" in r.output
    assert not out.exists() and not restyle.work_dir(out).exists()


def test_shared_noise_flag_reaches_animatediff_mode_only(src_png, tmp_path, tiny_dir):
    args = ["-q", "restyle", str(src_png), "-p", "a blue circle", "--mode", "animatediff", "--seed", "4", "--steps", "2",
            "--strength", "0.8", "--no-report"]
    outs = {}
    for share in ("0", "0.9"):
        out = tmp_path / f"s{share}.mp4"
        r = CliRunner().invoke(cli, [*args, "--shared-noise", share, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads(video.sidecar_path(out).read_text())["settings"]["shared_noise"] == float(share)
        outs[share] = video.read(out)[0].astype(np.int16)
    assert np.abs(outs["0"] - outs["0.9"]).mean() > 1.0  # the common noise really changed the start
    r = CliRunner().invoke(cli, ["restyle", str(src_png), "-p", "x", "--shared-noise", "0.5", "-o", str(tmp_path / "f")])
    assert r.exit_code == 2 and "--shared-noise goes with --mode animatediff" in r.output
    assert not (tmp_path / "f").exists()


def test_motion_scale_flag_reaches_animatediff_mode_only(src_png, tmp_path, tiny_dir):
    args = ["-q", "restyle", str(src_png), "-p", "a blue circle", "--mode", "animatediff", "--seed", "4", "--steps", "2",
            "--strength", "0.8", "--max-frames", "4", "--no-report"]
    outs = {}
    for scale in ("0", "1"):
        out = tmp_path / f"m{scale}.mp4"
        r = CliRunner().invoke(cli, [*args, "--motion-scale", scale, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads(video.sidecar_path(out).read_text())["settings"]["motion_scale"] == float(scale)
        outs[scale] = video.read(out)[0].astype(np.int16)
    assert np.abs(outs["0"] - outs["1"]).mean() > 1.0  # 0 draws each frame without the motion modules
    r = CliRunner().invoke(cli, ["restyle", str(src_png), "-p", "x", "--motion-scale", "0.5", "-o", str(tmp_path / "f")])
    assert r.exit_code == 2 and r.stderr.strip() == (
        "lcmvideo: error: --motion-scale 0.5: goes with --mode animatediff (frames mode runs the image UNet, "
        "without the motion modules)")
    assert not (tmp_path / "f").exists()


def test_canny_and_position_maps_of_the_input():
    """The annotators behind `--controlnet MODEL canny|position`: edges on the shape's outline, a blob at it."""
    clip = moving_clip(4)
    edges = control.annotate("canny_from", clip)
    assert edges.shape == clip.shape and set(np.unique(edges)) == {0, 255}
    for f, e in zip(clip, edges):
        r = analyse.read(f)
        ys, xs = np.nonzero(e[..., 0])
        assert abs(xs.mean() - r.x) < 1 and abs(ys.mean() - r.y) < 1  # the circle's outline, centred on it
        assert e[int(r.y), int(r.x), 0] == 0  # not its inside
    maps = control.annotate("position_from", clip)
    for f, m in zip(clip, maps):
        r, b = analyse.read(f), analyse.read(m)
        assert abs(b.x - r.x) < 0.5 and abs(b.y - r.y) < 0.5
    wide = control.annotate("position_from", np.stack([np.pad(clip[0], ((0, 0), (32, 32), (0, 0)))]))
    assert wide.shape == (1, 64, 128, 3) and abs(analyse.read(wide[0]).x - (analyse.read(clip[0]).x + 32)) < 0.5
    assert not control.annotate("position_from", np.zeros((1, 64, 64, 3), np.uint8)).any()  # no shape, no blob


def test_canny_source_of_the_input_conditions_the_net(session, src_png, tmp_path):
    """`--controlnet MODEL canny`: the input's edges reach the ControlNet, and change the output."""
    r = CliRunner().invoke(cli, ["-q", "restyle", str(src_png), "-p", "a blue circle", "--steps", "2", "--no-report",
                                 "--seed", "1", "--controlnet", "embedded", "canny", "-o", str(tmp_path / "c.mp4")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "c.mp4.json").read_text())
    assert meta["settings"]["controlnet"][0]["canny_from"] == schedule.INPUT
    plain = run(session, src_png, tmp_path / "p.mp4", steps=2)
    assert not np.array_equal(video.read(tmp_path / "c.mp4")[0], video.read(plain)[0])
    sched = tmp_path / "s.yaml"
    sched.write_text("prompt: a blue circle\nsteps: 2\ncontrolnet:\n  - canny_from: <input>\n")
    r = CliRunner().invoke(cli, ["-q", "restyle", str(src_png), str(sched), "--no-report", "--seed", "1",
                                 "-o", str(tmp_path / "s.mp4")])
    assert r.exit_code == 0, r.output
    assert np.array_equal(video.read(tmp_path / "s.mp4")[0], video.read(tmp_path / "c.mp4")[0])
    r = CliRunner().invoke(cli, ["-q", "render", str(sched), "-o", str(tmp_path / "r.mp4")])
    assert r.exit_code == 2 and "<input> means the input of a restyle" in r.output, r.output
    assert not (tmp_path / "r.mp4").exists()
