"""ControlNet conditioning: loading, sources, fitting, per-frame and per-net scales."""

import json

import layouts
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import render_settings
from PIL import Image

from lcmvideo import models, schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.output import images
from lcmvideo.pipeline import control, pose, text2video
from lcmvideo.schedule import ControlSpec


def square(x, y, size=64, side=16):
    img = np.zeros((size, size, 3), np.uint8)
    img[y:y + side, x:x + side] = 255
    return img


@pytest.fixture
def poses(tmp_path):
    d = tmp_path / "poses"
    d.mkdir()
    Image.fromarray(square(4, 4)).save(d / "0000.png")
    Image.fromarray(square(40, 40)).save(d / "0004.png")
    return d


def with_control(frames=8, steps=2, **spec):
    s = render_settings(frames=frames, steps=steps)
    s.controlnet = [ControlSpec(**spec)] if spec else []
    return s


class NetSpy:
    def __init__(self, net):
        self.inputs = []
        self.handle = net.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.inputs.append(kwargs["controlnet_cond"].detach().clone())

    def close(self):
        self.handle.remove()


def test_conditioning_changes_output_and_scale_zero_does_not(tiny_models, poses):
    plain = text2video.render(tiny_models, with_control())
    on = text2video.render(tiny_models, with_control(images=str(poses / "0000.png")))
    zero = text2video.render(tiny_models, with_control(images=str(poses / "0000.png"), scale=0.0))
    moved = text2video.render(tiny_models, with_control(images=str(poses / "0004.png")))
    assert np.array_equal(zero, plain)
    assert np.abs(on.astype(int) - plain).mean() > 1
    # where the condition is matters (weakly through an untrained random ControlNet, but measurably)
    moved_diff = np.abs(on.astype(int) - moved)
    assert moved_diff.mean() > 0.05 and (moved_diff > 0).mean() > 0.05


def test_controlnet_input_per_frame_and_sparse_rules(tiny_models, poses):
    net = tiny_models.controlnet(models.resolve_controlnet(None, tiny_models.spec, "x"))
    spy = NetSpy(net)
    try:
        text2video.render(tiny_models, with_control(steps=1, images=str(poses), missing="nearest"))
    finally:
        spy.close()
    cond = spy.inputs[0]  # (8, 3, 64, 64) in [0, 1], one per frame
    a, b = torch.from_numpy(square(4, 4)).permute(2, 0, 1) / 255, torch.from_numpy(square(40, 40)).permute(2, 0, 1) / 255
    nearest = [a, a, a, b, b, b, b, b]  # frame 2 ties between 0 and 4: the earlier wins
    assert cond.shape == (8, 3, 64, 64)
    assert all(torch.allclose(cond[f], nearest[f]) for f in range(8))
    images, present = control.load(ControlSpec(images=str(poses)), 8, 64, 64)
    assert present.tolist() == [True, False, False, False, True, False, False, False]
    assert control.assignment(ControlSpec(images=str(poses)), 8) == ["0000.png", None, None, None, "0004.png",
                                                                     None, None, None]


def test_frames_without_image_get_no_control(tiny_models, poses):
    s = with_control(images=str(poses), missing="none")
    s = text2video.resolve_settings(s, tiny_models)
    c = control.prepare_controls(tiny_models, s, schedule.plan(s))[0]
    assert c.scale.tolist() == [1, 0, 0, 0, 1, 0, 0, 0]


def test_controlnet_scale_travels_per_frame(tiny_models, poses):
    s = with_control(frames=5, images=str(poses / "0000.png"), scale=0.5)
    s.keyframes = {"0": {"prompt": "a", "controlnet_scale": 0.0}, "4": {"prompt": "a", "controlnet_scale": 1.0}}
    s = text2video.resolve_settings(schedule.finish(s), tiny_models)
    c = control.prepare_controls(tiny_models, s, schedule.plan(s))[0]
    assert c.scale.tolist() == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])


def test_multi_controlnet_scales_add_up(tiny_models, poses):
    img = str(poses / "0000.png")
    one = with_control(images=img)
    two = render_settings(frames=8, steps=2)
    two.controlnet = [ControlSpec(images=img, scale=0.5), ControlSpec(images=img, scale=0.5)]
    off = render_settings(frames=8, steps=2)
    off.controlnet = [ControlSpec(images=img, scale=1.0), ControlSpec(images=str(poses / "0004.png"), scale=0.0)]
    a, b, c = (text2video.render(tiny_models, s) for s in (one, two, off))
    assert np.abs(a.astype(int) - b).max() <= 1  # 0.5 r + 0.5 r == r
    assert np.abs(a.astype(int) - c).max() <= 1  # a net at scale 0 adds nothing


def test_start_end_limit_the_steps(tiny_models, poses):
    net = tiny_models.controlnet(models.resolve_controlnet(None, tiny_models.spec, "x"))
    spy = NetSpy(net)
    try:
        text2video.render(tiny_models, with_control(steps=4, images=str(poses / "0000.png"), start=0.25, end=0.75))
    finally:
        spy.close()
    assert len(spy.inputs) == 2  # steps 1 and 2 of 0-3


def test_fit_rules():
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :32] = 255  # left half white
    crop = images.fit(wide, 16, 16, "crop")
    pad = images.fit(wide, 16, 16, "pad")
    stretch = images.fit(wide, 16, 16, "stretch")
    assert crop.shape == pad.shape == stretch.shape == (16, 16, 3)
    assert crop[:, :6].min() == 255 and crop[:, 10:].max() == 0  # centre crop: half white, half black
    assert pad[:3].max() == 0 and pad[-3:].max() == 0 and pad[6:10, :6].min() == 255  # bars above and below
    assert stretch[:, :7].min() == 255 and stretch[:, 9:].max() == 0


def test_video_source_count_rules(tmp_path, tiny_models):
    from lcmvideo.output import video

    clip = np.stack([square(4 * i, 4 * i) for i in range(6)])
    path = video.write(clip, tmp_path / "c.mp4", 8)
    with pytest.raises(LcmvideoError, match=r"c.mp4: 6 frames, but the clip has 8; set count: stretch"):
        control.load(ControlSpec(video=str(path)), 8, 64, 64)
    images, present = control.load(ControlSpec(video=str(path), count="stretch"), 8, 64, 64)
    assert images.shape == (8, 64, 64, 3) and present.all()
    assert control.assignment(ControlSpec(video=str(path), count="stretch"), 8)[-1] == "c.mp4#5"


def test_bad_sources_are_clear_errors(tmp_path, poses):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(LcmvideoError, match=r"0000.png: not a readable image") as e:
        control.load(ControlSpec(images=str(tmp_path / "bad")), 8, 64, 64)
    assert e.value.exit_code == 2
    Image.fromarray(square(0, 0)).save(poses / "0012.png")
    with pytest.raises(LcmvideoError, match=r"0012.png: frame 12 is beyond the clip \(frames: 8\)"):
        control.load(ControlSpec(images=str(poses)), 8, 64, 64)
    Image.fromarray(square(0, 0)).save(tmp_path / "pose.png")
    (tmp_path / "unnumbered").mkdir()
    Image.fromarray(square(0, 0)).save(tmp_path / "unnumbered" / "pose.png")
    with pytest.raises(LcmvideoError, match="no frame number in the file name"):
        control.load(ControlSpec(images=str(tmp_path / "unnumbered")), 8, 64, 64)
    with pytest.raises(LcmvideoError, match="no such folder"):
        control.load(ControlSpec(images=str(tmp_path / "nope")), 8, 64, 64)


def test_differently_sized_images_are_fitted(tmp_path, tiny_models):
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(np.full((100, 50, 3), 255, np.uint8)).save(d / "0000.png")
    Image.fromarray(np.full((30, 90, 3), 128, np.uint8)).save(d / "0001.png")
    images, present = control.load(ControlSpec(images=str(d), missing="nearest"), 4, 64, 48)
    assert images.shape == (4, 48, 64, 3) and present.all()
    assert images[0].min() == 255 and images[3].max() == 128


def test_single_file_controlnet_layouts(tiny_dir, tiny_models, poses, tmp_path):
    img = str(poses / "0000.png")
    ref_frames = text2video.render(tiny_models, with_control(images=img))
    for name in ("control_tiny_openpose.safetensors", "control_tiny_openpose.pth"):
        path = layouts.write_controlnet_ldm(tiny_dir / "controlnet", tmp_path / name)
        spec = models.resolve_controlnet(str(path), tiny_models.spec, "m")
        assert spec.sniffed.kind == "controlnet" and spec.sniffed.layout == "ldm"
        frames = text2video.render(tiny_models, with_control(images=img, model=str(path)))
        assert np.abs(frames.astype(int) - ref_frames).max() <= 1


def test_controlnet_model_errors(tiny_dir, tiny_models, tmp_path):
    spec = models.resolve(schedule.ModelPaths(base=str(tiny_dir), motion=str(tiny_dir / "motion_adapter"),
                                               lcm_lora="none"))
    with pytest.raises(LcmvideoError, match="controlnet\\[0\\].model: name a ControlNet model"):
        models.resolve_controlnet(None, spec, "controlnet[0].model")
    with pytest.raises(LcmvideoError, match="is a base model .* not a controlnet model"):
        models.resolve_controlnet(str(tiny_dir), tiny_models.spec, "m")


def test_cli_render_with_controlnet_and_plan(tmp_path, poses):
    sched = tmp_path / "c.yaml"
    sched.write_text(f"prompt: a\nframes: 6\nsteps: 1\nseed: 1\ncontrolnet:\n  - {{images: {poses}, missing: nearest}}\n")
    r = CliRunner().invoke(cli, ["plan", "--json", str(sched)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["controlnet"][0]["frames"] == ["0000.png"] * 3 + ["0004.png"] * 3
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(cli, ["-q", "render", "--prompt", "a", "--frames", "6", "--steps", "1", "-o", str(out),
                                 "--controlnet", "embedded", str(poses)])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "o.mp4.json").read_text())
    assert side["settings"]["controlnet"][0]["images"] == str(poses)
    r = CliRunner().invoke(cli, ["render", "--prompt", "a", "-o", str(out), "--controlnet", "embedded",
                                 str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such image, folder or video" in r.stderr


def person(**points):
    p = np.zeros((18, 3))
    for name, (x, y) in points.items():
        p[pose.COCO18.index(name)] = x, y, 1.0
    return p


def test_skeleton_colours_and_places():
    img = pose.draw([person(neck=(0.5, 0.3), r_shoulder=(0.3, 0.3), r_elbow=(0.3, 0.6))], 512, 512)
    limb0 = img[int(0.3 * 512), int(0.4 * 512)]  # middle of neck -> right shoulder, limb 0
    limb2 = img[int(0.45 * 512), int(0.3 * 512)]  # middle of right shoulder -> elbow, limb 2
    assert limb0.tolist() == [int(c * 0.6) for c in pose.COLORS[0]]
    assert limb2.tolist() == [int(c * 0.6) for c in pose.COLORS[2]]
    assert img[int(0.3 * 512), int(0.5 * 512)].tolist() == pose.COLORS[1]  # the neck joint, full colour
    assert img[int(0.6 * 512), int(0.3 * 512)].tolist() == pose.COLORS[3]
    assert img[10, 500].tolist() == [0, 0, 0]


def test_missing_points_draw_nothing():
    full = person(neck=(0.5, 0.3), r_shoulder=(0.3, 0.3), r_elbow=(0.3, 0.6))
    gone = full.copy()
    gone[pose.COCO18.index("r_elbow"), 2] = 0.0
    without = person(neck=(0.5, 0.3), r_shoulder=(0.3, 0.3))
    assert np.array_equal(pose.draw([gone], 256, 256), pose.draw([without], 256, 256))
    assert pose.draw([gone], 256, 256)[int(0.6 * 256), int(0.3 * 256)].tolist() == [0, 0, 0]


def test_body25_json_maps_to_coco18(tmp_path):
    coco = person(nose=(0.5, 0.1), neck=(0.5, 0.2), r_hip=(0.45, 0.5), l_ankle=(0.55, 0.9))
    body25 = np.zeros((25, 3))
    body25[pose.BODY25_TO_COCO18] = coco
    body25[8] = 0.5, 0.5, 1  # MidHip and a foot: not in COCO-18
    body25[19] = 0.6, 0.95, 1
    (tmp_path / "b.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": body25.reshape(-1).tolist()}]}))
    (tmp_path / "c.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": coco.reshape(-1).tolist()}]}))
    a, b = pose.read_openpose_json(tmp_path / "b.json"), pose.read_openpose_json(tmp_path / "c.json")
    assert np.array_equal(pose.draw(a, 128, 128), pose.draw(b, 128, 128))


def test_openpose_json_pixels_and_errors(tmp_path):
    p = person(neck=(0.5, 0.25))
    pose.write_openpose_json(tmp_path / "0000.json", [p], 640, 480)
    back = pose.read_openpose_json(tmp_path / "0000.json")
    assert np.allclose(back[0], p, atol=1e-3)
    data = json.loads((tmp_path / "0000.json").read_text())
    del data["canvas_width"], data["canvas_height"]
    (tmp_path / "nocanvas.json").write_text(json.dumps(data))
    with pytest.raises(LcmvideoError, match="nocanvas.json: keypoints are in pixels") as e:
        pose.read_openpose_json(tmp_path / "nocanvas.json")
    assert e.value.exit_code == 2
    assert np.allclose(pose.read_openpose_json(tmp_path / "nocanvas.json", size=(640, 480))[0], p, atol=1e-3)
    (tmp_path / "odd.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": [0.1] * 30}]}))
    with pytest.raises(LcmvideoError, match="10 keypoints per person"):
        pose.read_openpose_json(tmp_path / "odd.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(LcmvideoError, match="bad.json: not a readable OpenPose JSON"):
        pose.read_openpose_json(tmp_path / "bad.json")
    assert [pose.frame_number(n) for n in ("0016.png", "clip_000000000012_keypoints.json", "frame-7.jpg",
                                            "pose.png")] == [16, 12, 7, None]


def test_openpose_json_frames_reach_the_controlnet(tiny_models, tmp_path):
    d = tmp_path / "json"
    d.mkdir()
    poses_by_frame = [[person(neck=(0.2 + 0.1 * k, 0.3), r_shoulder=(0.1 + 0.1 * k, 0.3),
                              r_elbow=(0.1 + 0.1 * k, 0.6))] for k in range(4)]
    for k, people in enumerate(poses_by_frame):
        pose.write_openpose_json(d / f"clip_{k:012d}_keypoints.json", people, 64, 64)
    net = tiny_models.controlnet(models.resolve_controlnet(None, tiny_models.spec, "x"))
    spy = NetSpy(net)
    try:
        text2video.render(tiny_models, with_control(frames=4, steps=1, openpose=str(d)))
    finally:
        spy.close()
    cond = spy.inputs[0]
    for k, people in enumerate(poses_by_frame):
        expected = torch.from_numpy(pose.draw(people, 64, 64)).permute(2, 0, 1) / 255
        assert torch.allclose(cond[k], expected, atol=1e-6), k


class FakeMediaPipe:
    """MediaPipe's legacy pose API, with fixed landmarks."""

    class _Pose:
        def __init__(self, **kw):
            self.kw = kw

        def process(self, rgb):
            from types import SimpleNamespace

            marks = [SimpleNamespace(x=0.01 * i, y=0.02 * i, visibility=0.9) for i in range(33)]
            marks[14].visibility = 0.1  # right elbow: too unsure
            return SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=marks))

    def __init__(self):
        from types import SimpleNamespace

        self.solutions = SimpleNamespace(pose=SimpleNamespace(Pose=FakeMediaPipe._Pose))


def test_mediapipe_adapter_and_missing_extra(tmp_path, monkeypatch):
    est = pose.MediaPipePose(FakeMediaPipe())
    (p,) = est(np.zeros((8, 8, 3), np.uint8))
    assert p[pose.COCO18.index("r_shoulder")].tolist() == pytest.approx([0.12, 0.24, 0.9])
    assert p[1].tolist() == pytest.approx([(0.12 + 0.11) / 2, (0.24 + 0.22) / 2, 0.9])  # neck
    assert p[pose.COCO18.index("r_elbow"), 2] == 0.0
    n = pose.extract_to_folder(np.zeros((3, 32, 32, 3), np.uint8), tmp_path / "out", estimator=est)
    assert n == 3 and sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "0000.json", "0000.png", "0001.json", "0001.png", "0002.json", "0002.png"]
    monkeypatch.setitem(__import__("sys").modules, "mediapipe", None)
    with pytest.raises(LcmvideoError, match=r"pip install 'lcmvideo\[pose\]'") as e:
        pose.extract(np.zeros((1, 8, 8, 3), np.uint8))
    assert e.value.exit_code == 2
    with pytest.raises(LcmvideoError, match=r"lcmvideo\[pose\]"):
        control.load(ControlSpec(pose_from=str(_clip(tmp_path))), 4, 64, 64)


def _clip(tmp_path):
    from lcmvideo.output import video

    return video.write(np.zeros((4, 32, 32, 3), np.uint8), tmp_path / "person.mp4", 8)


def test_pose_extract_cli_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mediapipe", None)
    r = CliRunner().invoke(cli, ["pose", "extract", str(_clip(tmp_path)), "-o", str(tmp_path / "poses")])
    assert r.exit_code == 2 and "lcmvideo[pose]" in r.stderr
    assert not (tmp_path / "poses").exists()
