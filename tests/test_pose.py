import json
import math
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lcmvideo.errors import LcmvideoError
from lcmvideo.pipeline import pose


def person(**points):
    """A COCO-18 person with the named points at (x, y), confidence 1; the rest missing."""
    p = np.zeros((18, 3))
    for name, (x, y) in points.items():
        p[pose.COCO18.index(name)] = x, y, 1.0
    return p


def controlnet_draw_bodypose(canvas, candidate, subset):
    """ControlNet 1.1 annotator/openpose/util.py draw_bodypose, transcribed verbatim as the reference."""
    H, W, C = canvas.shape
    candidate = np.array(candidate)
    subset = np.array(subset)
    stickwidth = 4
    limbSeq = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13],
               [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
    colors = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
              [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
              [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
    for i in range(17):
        for n in range(len(subset)):
            index = subset[n][np.array(limbSeq[i]) - 1]
            if -1 in index:
                continue
            Y = candidate[index.astype(int), 0] * float(W)
            X = candidate[index.astype(int), 1] * float(H)
            mX = np.mean(X)
            mY = np.mean(Y)
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), stickwidth), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, colors[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        for n in range(len(subset)):
            index = int(subset[n][i])
            if index == -1:
                continue
            x, y = candidate[index][0:2]
            x = int(x * W)
            y = int(y * H)
            cv2.circle(canvas, (int(x), int(y)), 4, colors[i], thickness=-1)
    return canvas


def reference(people, width, height):
    """Our people as ControlNet's candidate list and subset table, drawn by its code."""
    candidate, subset = [], []
    for p in people:
        row = [-1] * 20
        for i in range(18):
            if p[i, 2] > 0:
                row[i] = len(candidate)
                candidate.append([float(p[i, 0]), float(p[i, 1]), float(p[i, 2]), len(candidate)])
        subset.append(row)
    return controlnet_draw_bodypose(np.zeros((height, width, 3), np.uint8), candidate, subset)


ARM = dict(neck=(0.5, 0.3), r_shoulder=(0.4, 0.3), r_elbow=(0.4, 0.5))


def test_tables():
    assert len(pose.COCO18) == 18 and len(pose.COLORS) == 18 and len(pose.LIMBS) == 17
    assert pose.LIMBS[0] == (1, 2) and pose.LIMBS[12] == (1, 0) and pose.LIMBS[-1] == (15, 17)
    assert [pose.COCO18[a] + "-" + pose.COCO18[b] for a, b in pose.LIMBS[:3]] == [
        "neck-r_shoulder", "neck-l_shoulder", "r_shoulder-r_elbow"]


def test_skeleton_colours_and_places():
    img = pose.draw([person(**ARM)], 512, 512)
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert img[153, 230].tolist() == [153, 0, 0]  # middle of neck -> r_shoulder: limb 0, dimmed to 60 %
    assert img[204, 204].tolist() == [153, 102, 0]  # middle of r_shoulder -> r_elbow: limb 2
    assert img[225, 204].tolist() == [153, 102, 0]  # the vertical limb runs along y ...
    assert img[204, 212].tolist() == [0, 0, 0]  # ... and is 4 px wide each side, not along x
    assert img[153, 256].tolist() == pose.COLORS[1]  # joints in full colour: neck
    assert img[153, 204].tolist() == pose.COLORS[2]  # r_shoulder
    assert img[256, 204].tolist() == pose.COLORS[3]  # r_elbow
    assert img[500, 10].tolist() == [0, 0, 0]
    assert np.array_equal(img, reference([person(**ARM)], 512, 512))


def test_missing_points_draw_nothing():
    gone = person(**ARM)
    gone[pose.COCO18.index("r_elbow"), 2] = 0.0
    negative = person(**ARM)
    negative[pose.COCO18.index("r_elbow"), 2] = -1.0
    without = person(neck=ARM["neck"], r_shoulder=ARM["r_shoulder"])
    img = pose.draw([gone], 512, 512)
    assert img[256, 204].tolist() == [0, 0, 0]  # no joint
    assert img[225, 204].tolist() == [0, 0, 0]  # no limb towards it
    assert img[153, 230].tolist() == [153, 0, 0]  # the rest still drawn
    assert np.array_equal(img, pose.draw([without], 512, 512))
    assert np.array_equal(pose.draw([negative], 512, 512), img)
    assert not pose.draw([], 64, 48).any() and pose.draw([], 64, 48).shape == (48, 64, 3)


def test_several_people_all_drawn():
    a, b = person(**ARM), person(neck=(0.2, 0.8), r_shoulder=(0.1, 0.8))
    img = pose.draw([a, b], 256, 256)
    assert img[int(0.8 * 256), int(0.2 * 256)].tolist() == pose.COLORS[1]
    assert img[int(0.3 * 256), int(0.5 * 256)].tolist() == pose.COLORS[1]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_draw_matches_controlnet(data):
    w, h = data.draw(st.integers(8, 160)), data.draw(st.integers(8, 160))
    n = data.draw(st.integers(0, 3))
    coord = st.floats(-0.2, 1.2, allow_nan=False)
    people = [np.array([[data.draw(coord), data.draw(coord), data.draw(st.sampled_from([0.0, 0.4, 1.0]))]
                        for _ in range(18)]) for _ in range(n)]
    assert np.array_equal(pose.draw(people, w, h), reference(people, w, h))


def write_json(path, people_rows, **extra):
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": r} for r in people_rows], **extra}))
    return path


def test_body25_json_maps_to_coco18(tmp_path):
    coco = person(nose=(0.5, 0.1), neck=(0.5, 0.2), r_hip=(0.45, 0.5), l_ankle=(0.55, 0.9), l_ear=(0.52, 0.08))
    body25 = np.zeros((25, 3))
    body25[pose.BODY25_TO_COCO18] = coco
    body25[8] = 0.5, 0.5, 1  # MidHip and the feet: not in COCO-18
    body25[19:25] = 0.6, 0.95, 1
    for p in (coco, body25):
        p[:, 0] *= 640
        p[:, 1] *= 480
    canvas = dict(canvas_width=640, canvas_height=480)
    a = pose.read_openpose_json(write_json(tmp_path / "b.json", [body25.reshape(-1).tolist()], **canvas))
    b = pose.read_openpose_json(write_json(tmp_path / "c.json", [coco.reshape(-1).tolist()], **canvas))
    assert len(a) == 1 and a[0].shape == (18, 3)
    assert np.allclose(a[0], b[0])
    assert np.array_equal(pose.draw(a, 128, 96), pose.draw(b, 128, 96))
    assert pose.draw(a, 128, 96)[int(0.5 * 96), int(0.5 * 128)].tolist() == [0, 0, 0]  # no MidHip joint


def test_json_coordinates(tmp_path):
    neck = [0.0] * 54
    neck[3:6] = 320, 120, 0.8
    p = pose.read_openpose_json(write_json(tmp_path / "canvas.json", [neck], canvas_width=640, canvas_height=480))
    assert p[0][1].tolist() == pytest.approx([0.5, 0.25, 0.8]) and p[0][0].tolist() == [0, 0, 0]
    nocanvas = write_json(tmp_path / "nocanvas.json", [neck])
    with pytest.raises(LcmvideoError) as e:
        pose.read_openpose_json(nocanvas)
    assert e.value.exit_code == 2 and "nocanvas.json" in str(e.value)
    assert "keypoints are in pixels but the file has no canvas_width/canvas_height; give the source size" in str(e.value)
    assert pose.read_openpose_json(nocanvas, size=(640, 480))[0][1].tolist() == pytest.approx([0.5, 0.25, 0.8])
    normalised = [0.0] * 54
    normalised[3:6] = 0.5, 1.0, 0.9  # all within 0..1, missing points at 0, 0: already normalised
    assert pose.read_openpose_json(write_json(tmp_path / "n.json", [normalised]))[0][1].tolist() == [0.5, 1.0, 0.9]
    outside = [0.0] * 54
    outside[3:6] = -3, 0.5, 0.9
    with pytest.raises(LcmvideoError, match="o.json: keypoints are in pixels"):
        pose.read_openpose_json(write_json(tmp_path / "o.json", [outside]))


def test_json_people_and_errors(tmp_path):
    empty = write_json(tmp_path / "empty.json", [])
    assert pose.read_openpose_json(empty) == []
    (tmp_path / "faceonly.json").write_text(json.dumps({"people": [{"face_keypoints_2d": [1, 2, 3]},
                                                                   {"pose_keypoints_2d": []}]}))
    assert pose.read_openpose_json(tmp_path / "faceonly.json") == []
    two = pose.read_openpose_json(write_json(tmp_path / "two.json", [[0.1] * 54, [0.2] * 75]))
    assert len(two) == 2 and two[1].shape == (18, 3)

    def fails(name, text, *expected):
        (tmp_path / name).write_text(text)
        with pytest.raises(LcmvideoError) as e:
            pose.read_openpose_json(tmp_path / name)
        assert e.value.exit_code == 2 and name in str(e.value) and "\n" not in str(e.value)
        for part in expected:
            assert part in str(e.value)

    fails("odd.json", json.dumps({"people": [{"pose_keypoints_2d": [0.1] * 30}]}), "10 keypoints", "18", "25")
    fails("ragged.json", json.dumps({"people": [{"pose_keypoints_2d": [0.1] * 55}]}), "55 numbers")
    fails("bad.json", "{nope", "not a readable OpenPose JSON")
    fails("list.json", "[1, 2]", "'people' list")
    fails("words.json", json.dumps({"people": [{"pose_keypoints_2d": ["a"] * 54}]}), "numbers")
    fails("canvas.json", json.dumps({"people": [], "canvas_width": 0, "canvas_height": 5}), "canvas_width")
    with pytest.raises(LcmvideoError, match="missing.json") as e:
        pose.read_openpose_json(tmp_path / "missing.json")
    assert e.value.exit_code == 2


def test_json_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    people = [np.column_stack([rng.random((18, 2)), rng.choice([0.0, 0.35, 1.0], 18)]) for _ in range(3)]
    pose.write_openpose_json(tmp_path / "0007.json", people, 640, 480)
    data = json.loads((tmp_path / "0007.json").read_text())
    assert (data["canvas_width"], data["canvas_height"]) == (640, 480)
    assert data["people"][0]["pose_keypoints_2d"][0] == pytest.approx(people[0][0, 0] * 640, abs=1e-3)  # pixels
    back = pose.read_openpose_json(tmp_path / "0007.json")
    assert len(back) == 3 and all(np.allclose(a, b, atol=1e-4) for a, b in zip(back, people))
    assert [p.name for p in tmp_path.iterdir()] == ["0007.json"]  # no temp file left


@pytest.mark.parametrize("name, number", [("0016.png", 16), ("clip_000000000012_keypoints.json", 12),
                                          ("frame-7.jpg", 7), ("pose.png", None), ("dir9/pose.png", None),
                                          ("v2_frame_0003.png", 3)])
def test_frame_number(name, number):
    assert pose.frame_number(name) == number


class FakeEstimator:
    def __init__(self):
        self.frames = []

    def __call__(self, frame):
        self.frames.append(frame)
        k = len(self.frames)
        return [person(neck=(0.1 * k, 0.5), r_shoulder=(0.1 * k - 0.05, 0.5))] if k % 2 else []


def test_extract_with_an_estimator():
    frames = np.random.default_rng(1).integers(0, 256, (3, 24, 32, 3), np.uint8)
    est = FakeEstimator()
    people = pose.extract(frames, estimator=est)
    assert [len(p) for p in people] == [1, 0, 1]
    assert people[2][0][1].tolist() == pytest.approx([0.3, 0.5, 1.0])
    assert len(est.frames) == 3 and all(np.array_equal(a, b) for a, b in zip(est.frames, frames))
    with pytest.raises(LcmvideoError, match="uint8 RGB"):
        pose.extract(frames[..., :2], estimator=est)


def test_extract_to_folder(tmp_path):
    frames = np.zeros((3, 24, 32, 3), np.uint8)
    out = tmp_path / "poses"
    assert pose.extract_to_folder(frames, out, estimator=FakeEstimator()) == 3
    assert sorted(f.name for f in out.iterdir()) == [
        "0000.json", "0000.png", "0001.json", "0001.png", "0002.json", "0002.png"]
    expected = FakeEstimator()
    for i in range(3):
        people = expected(frames[i])
        png = np.asarray(Image.open(out / f"{i:04d}.png").convert("RGB"))
        assert np.array_equal(png, pose.draw(people, 32, 24))
        back = pose.read_openpose_json(out / f"{i:04d}.json")
        assert len(back) == len(people) and all(np.allclose(a, b, atol=1e-4) for a, b in zip(back, people))
    assert np.asarray(Image.open(out / "0000.png")).any() and not np.asarray(Image.open(out / "0001.png")).any()
    with pytest.raises(LcmvideoError, match="poses: the output folder exists and is not empty") as e:
        pose.extract_to_folder(frames, out, estimator=FakeEstimator())
    assert e.value.exit_code == 2
    (tmp_path / "empty").mkdir()
    assert pose.extract_to_folder(frames[:1], tmp_path / "empty", estimator=FakeEstimator(), quiet=False) == 1


def test_missing_mediapipe_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    for call in (lambda: pose.extract(np.zeros((1, 8, 8, 3), np.uint8)),
                 lambda: pose.extract_to_folder(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "out")):
        with pytest.raises(LcmvideoError) as e:
            call()
        assert e.value.exit_code == 2
        assert "pip install 'lcmvideo[pose]'" in str(e.value) and "MediaPipe 0.10.21" in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing left behind


MP_NAMES = ["nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
            "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
            "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
            "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
            "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index"]  # PoseLandmark order


def fake_mediapipe(visibility=None, found=True):
    """MediaPipe's legacy `solutions.pose` API with fixed landmarks; records what it was given."""
    made = []

    class Pose:
        def __init__(self, **kw):
            self.kw, self.inputs, self.closed = kw, [], False
            made.append(self)

        def process(self, rgb):
            self.inputs.append(rgb)
            if not found:
                return SimpleNamespace(pose_landmarks=None)
            marks = [SimpleNamespace(x=0.01 * i, y=0.02 * i, z=0.0, visibility=(visibility or {}).get(i, 0.9))
                     for i in range(33)]
            return SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=marks))

        def close(self):
            self.closed = True

    return SimpleNamespace(solutions=SimpleNamespace(pose=SimpleNamespace(Pose=Pose))), made


def test_mediapipe_adapter_mapping():
    mp, made = fake_mediapipe(visibility={MP_NAMES.index("right_elbow"): 0.29, MP_NAMES.index("left_ear"): 0.3,
                                          MP_NAMES.index("left_shoulder"): 0.5})
    est = pose.MediaPipePose(mp)
    assert made[0].kw == {"static_image_mode": False, "model_complexity": 1}
    frame = np.zeros((8, 8, 3), np.uint8)
    (p,) = est(frame)
    assert made[0].inputs[0] is frame and p.shape == (18, 3)
    for i, name in enumerate(pose.COCO18):
        if name == "neck":
            continue
        side, part = name.split("_") if "_" in name else ("", name)
        j = MP_NAMES.index({"r": "right_", "l": "left_", "": ""}[side] + part)
        assert p[i, :2].tolist() == pytest.approx([0.01 * j, 0.02 * j]), name
    r, l_ = MP_NAMES.index("right_shoulder"), MP_NAMES.index("left_shoulder")
    assert p[1].tolist() == pytest.approx([0.01 * (r + l_) / 2, 0.02 * (r + l_) / 2, 0.5])  # neck: min visibility
    assert p[pose.COCO18.index("r_elbow"), 2] == 0.0  # below 0.3: missing
    assert p[pose.COCO18.index("l_ear"), 2] == pytest.approx(0.3)
    assert p[pose.COCO18.index("nose"), 2] == pytest.approx(0.9)


def test_mediapipe_adapter_low_shoulder_drops_neck_and_nobody():
    mp, _ = fake_mediapipe(visibility={MP_NAMES.index("left_shoulder"): 0.1})
    (p,) = pose.MediaPipePose(mp)(np.zeros((8, 8, 3), np.uint8))
    assert p[1, 2] == 0.0 and p[pose.COCO18.index("l_shoulder"), 2] == 0.0
    mp, _ = fake_mediapipe(found=False)
    assert pose.MediaPipePose(mp)(np.zeros((8, 8, 3), np.uint8)) == []


def test_default_estimator_is_mediapipe(monkeypatch, tmp_path):
    mp, made = fake_mediapipe()
    monkeypatch.setitem(sys.modules, "mediapipe", mp)
    people = pose.extract(np.zeros((2, 8, 8, 3), np.uint8))
    assert [len(p) for p in people] == [1, 1] and len(made) == 1 and made[0].closed
    assert len(made[0].inputs) == 2  # one tracker over the whole clip
    assert pose.extract_to_folder(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "o") == 2 and made[1].closed


def test_no_torch_import():
    code = "import sys, lcmvideo.pipeline.pose; assert not {'torch', 'diffusers'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)
