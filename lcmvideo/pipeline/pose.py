"""OpenPose body skeletons as ControlNet's openpose model was trained on them.

Drawing follows ControlNet 1.1's annotator (`annotator/openpose/util.py`, draw_bodypose):
17 limbs as filled ellipses in its colours, dimmed to 60 %, then 18 joints as circles.
Stick width and joint radius stay its fixed 4 px whatever the canvas size (its values at
512 px), so the images look like the ones the model saw. People are (18, 3) arrays of
COCO-18 points: x, y normalised to the canvas, confidence (<= 0: missing).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..errors import runtime, usage
from ..output.atomic import replacing, write_text

COCO18 = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
          "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
# ControlNet's 1-based limbSeq, first 17 (the ones it draws; the ear-shoulder pair is not), made 0-based
LIMBS = [(a - 1, b - 1) for a, b in [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11],
                                     [2, 12], [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]]
COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
          [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
          [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]  # RGB: ControlNet hands the array to PIL
BODY25_TO_COCO18 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]  # drops MidHip (8), feet
STICK = 4  # ellipse half-width and joint radius in pixels (ControlNet's, fixed)


def draw(people: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """An RGB skeleton image (height, width, 3) uint8 of every person, as ControlNet 1.1 draws it."""
    import cv2

    # float64 like ControlNet's candidate array, so pixel rounding matches it exactly
    people = [np.asarray(p, np.float64) for p in people]
    canvas = np.zeros((height, width, 3), np.uint8)
    for i, (a, b) in enumerate(LIMBS):
        for p in people:
            if not (p[a, 2] > 0 and p[b, 2] > 0):
                continue
            # ControlNet's names: Y holds x pixels, X holds y pixels; kept so the maths reads alike
            Y = np.array([p[a, 0], p[b, 0]]) * float(width)
            X = np.array([p[a, 1], p[b, 1]]) * float(height)
            mX, mY = np.mean(X), np.mean(Y)
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            poly = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), STICK), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        for p in people:
            if p[i, 2] > 0:
                cv2.circle(canvas, (int(p[i, 0] * width), int(p[i, 1] * height)), STICK, COLORS[i], thickness=-1)
    return canvas


def read_openpose_json(path: Path, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """People of an OpenPose JSON file (COCO-18 or BODY-25), normalised to the canvas.

    Pixel coordinates are divided by the file's canvas_width/canvas_height (the ControlNet
    openpose editor writes them), else by `size` (w, h); coordinates all within 0..1 are
    taken as already normalised.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise usage(f"{path}: not a readable OpenPose JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("people", []), list):
        raise usage(f"{path}: expected an OpenPose JSON object with a 'people' list")
    if "canvas_width" in data and "canvas_height" in data:
        size = (data["canvas_width"], data["canvas_height"])
        if not all(isinstance(v, (int, float)) and v > 0 for v in size):
            raise usage(f"{path}: canvas_width/canvas_height must be positive numbers, got {list(size)}")
    people = []
    for person in data.get("people", []):
        flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not flat:  # OpenPose writes people with only face or hand keypoints too
            continue
        try:
            pts = np.asarray(flat, np.float64)
        except (TypeError, ValueError):
            raise usage(f"{path}: pose_keypoints_2d must be a flat list of numbers") from None
        if pts.ndim != 1 or not np.isfinite(pts).all():
            raise usage(f"{path}: pose_keypoints_2d must be a flat list of finite numbers")
        if pts.size == 75:
            pts = pts.reshape(25, 3)[BODY25_TO_COCO18]
        elif pts.size == 54:
            pts = pts.reshape(18, 3)
        else:
            count = f"{pts.size // 3} keypoints" if pts.size % 3 == 0 else f"{pts.size} numbers (not x, y, c)"
            raise usage(f"{path}: {count} per person; expected 18 (COCO-18) or 25 (BODY-25)")
        people.append(pts)
    if size is not None:
        for p in people:
            p[:, 0] /= size[0]
            p[:, 1] /= size[1]
    elif any(((p[:, :2] < 0) | (p[:, :2] > 1))[p[:, 2] > 0].any() for p in people):
        # missing points (confidence 0) are written as 0, 0 and say nothing about the units
        raise usage(f"{path}: keypoints are in pixels but the file has no canvas_width/canvas_height; "
                    "give the source size: --controlnet MODEL FOLDER@WIDTHxHEIGHT (or FOLDER@VIDEO, the video "
                    "the poses came from), or size: [width, height] (or size: VIDEO) in the schedule")
    return people


def write_openpose_json(path: Path, people: list[np.ndarray], width: int, height: int) -> None:
    """`people` as OpenPose JSON in pixels, with the canvas size so it reads back normalised."""
    rows = []
    for p in people:
        px = np.array(p, np.float64)
        px[:, 0] *= width
        px[:, 1] *= height
        rows.append({"pose_keypoints_2d": [round(float(v), 4) for v in px.reshape(-1)]})
    text = json.dumps({"version": 1.3, "canvas_width": width, "canvas_height": height, "people": rows})
    write_text(Path(path), text, "write")


def frame_number(path: Path) -> int | None:
    """The last run of digits in a file's stem: 0016.png -> 16, clip_000000000012_keypoints.json -> 12."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


MISSING_EXTRA = ("pose extraction needs the optional extra: pip install 'lcmvideo[pose]' "
                 "(MediaPipe 0.10.21; Python <= 3.12, numpy < 2)")
# MediaPipe's landmark for each COCO-18 point (both use the person's own left/right); the neck
# has none: it is the shoulders' midpoint
MEDIAPIPE_TO_COCO18 = [0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]
MIN_VISIBILITY = 0.3  # below this MediaPipe's guess is drawn as missing rather than wrong


class MediaPipePose:
    """MediaPipe's legacy pose solution as a `frame -> people` estimator (at most one person)."""

    def __init__(self, mp=None):
        if mp is None:
            try:
                import mediapipe as mp
            except ImportError:
                raise usage(MISSING_EXTRA) from None
        # video mode: landmarks are tracked from frame to frame, steadier than per-image detection
        self.pose = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1)

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        result = self.pose.process(frame)  # RGB in, landmarks normalised to the image out
        if not result.pose_landmarks:
            return []
        lm = result.pose_landmarks.landmark
        p = np.zeros((18, 3))
        for i, j in enumerate(MEDIAPIPE_TO_COCO18):
            if j is not None:
                p[i] = lm[j].x, lm[j].y, lm[j].visibility
        p[1] = (p[2, 0] + p[5, 0]) / 2, (p[2, 1] + p[5, 1]) / 2, min(p[2, 2], p[5, 2])
        p[p[:, 2] < MIN_VISIBILITY, 2] = 0.0
        return [p]

    def close(self) -> None:
        self.pose.close()


def extract(frames: np.ndarray, *, estimator=None) -> list[list[np.ndarray]]:
    """Per frame of (T, H, W, 3) uint8 RGB, the people found, as normalised COCO-18 arrays."""
    own = estimator is None
    estimator = MediaPipePose() if own else estimator
    try:
        return [estimator(np.ascontiguousarray(f)) for f in _check(frames)]
    finally:
        if own:
            estimator.close()


def extract_to_folder(video_frames: np.ndarray, out_dir: Path, *, estimator=None, quiet: bool = True) -> int:
    """0000.png skeletons and 0000.json keypoints per frame into a new (or empty) folder; the frame count."""
    from PIL import Image
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise usage(f"{out_dir}: the output folder exists and is not empty; give a new one")
    frames = _check(video_frames)
    own = estimator is None
    estimator = MediaPipePose() if own else estimator  # before mkdir: a missing extra leaves nothing behind
    try:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise runtime(f"{out_dir}: could not create the folder ({e.strerror or e})") from None
        h, w = frames.shape[1:3]
        for i, f in enumerate(tqdm(frames, desc="pose", unit="frame", disable=quiet)):
            people = estimator(np.ascontiguousarray(f))
            with replacing(out_dir / f"{i:04d}.png", ".png", "write") as tmp:
                Image.fromarray(draw(people, w, h)).save(tmp, "PNG")
            write_openpose_json(out_dir / f"{i:04d}.json", people, w, h)
    finally:
        if own:
            estimator.close()
    return len(frames)


def _check(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise usage(f"pose extraction needs frames as uint8 RGB (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames
