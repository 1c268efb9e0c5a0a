"""OpenPose body skeletons as ControlNet's openpose model was trained on them.

Drawing follows ControlNet 1.1's annotator (`annotator/openpose/util.py`, draw_bodypose):
17 limbs as filled ellipses in its colours, dimmed to 60 %, then 18 joints as circles.
Stick width and joint radius are its fixed 4 px. People are (18, 3) arrays of COCO-18
points: x, y normalised to the canvas, confidence (0 = missing).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .errors import usage

COCO18 = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
          "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
# ControlNet's 1-based limbSeq, first 17 (the ones it draws), made 0-based
LIMBS = [(a - 1, b - 1) for a, b in [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11],
                                     [2, 12], [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]]
COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
          [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
          [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
BODY25_TO_COCO18 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
STICK = 4


def draw(people: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """An RGB skeleton image (height, width, 3) uint8 of every person."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    for i, (a, b) in enumerate(LIMBS):
        for p in people:
            if p[a, 2] <= 0 or p[b, 2] <= 0:
                continue
            xs, ys = np.array([p[a, 0], p[b, 0]]) * width, np.array([p[a, 1], p[b, 1]]) * height
            length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            poly = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), STICK), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        for p in people:
            if p[i, 2] > 0:
                cv2.circle(canvas, (int(p[i, 0] * width), int(p[i, 1] * height)), 4, COLORS[i], thickness=-1)
    return canvas


def read_openpose_json(path: Path, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """People of an OpenPose JSON file (COCO-18 or BODY-25), normalised to the canvas."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise usage(f"{path}: not a readable OpenPose JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("people", []), list):
        raise usage(f"{path}: expected an OpenPose JSON object with a 'people' list")
    if "canvas_width" in data and "canvas_height" in data:
        size = (data["canvas_width"], data["canvas_height"])
    people = []
    for person in data.get("people", []):
        flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not flat:
            continue
        pts = np.asarray(flat, float)
        if pts.size == 75:
            pts = pts.reshape(25, 3)[BODY25_TO_COCO18]
        elif pts.size == 54:
            pts = pts.reshape(18, 3)
        else:
            raise usage(f"{path}: {pts.size // 3} keypoints per person; expected 18 (COCO-18) or 25 (BODY-25)")
        people.append(pts)
    if size is None and any(p[:, :2].max() > 1.0 for p in people):
        raise usage(f"{path}: keypoints are in pixels but the file has no canvas_width/canvas_height; "
                    "give the source size (size: [width, height])")
    if size is not None:
        for p in people:
            p[:, 0] /= size[0]
            p[:, 1] /= size[1]
    return people


def write_openpose_json(path: Path, people: list[np.ndarray], width: int, height: int):
    rows = []
    for p in people:
        px = np.array(p, float)
        px[:, 0] *= width
        px[:, 1] *= height
        rows.append({"pose_keypoints_2d": [round(float(v), 3) for v in px.reshape(-1)]})
    Path(path).write_text(json.dumps({"version": 1.3, "canvas_width": width, "canvas_height": height,
                                      "people": rows}))


def frame_number(path: Path) -> int | None:
    """The last run of digits in a file's stem: 0016.png -> 16, clip_000000000012_keypoints.json -> 12."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


MISSING_EXTRA = ("pose extraction needs the optional extra: pip install 'lcmvideo[pose]' "
                 "(MediaPipe 0.10.21; Python <= 3.12, numpy < 2)")
# MediaPipe's 33 landmarks for each COCO-18 point; the neck is the shoulders' midpoint
MEDIAPIPE_TO_COCO18 = [0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]


class MediaPipePose:
    """MediaPipe's legacy pose solution as a `frame -> people` callable (one person)."""

    def __init__(self, mp=None):
        if mp is None:
            try:
                import mediapipe as mp
            except ImportError:
                raise usage(MISSING_EXTRA) from None
        self.pose = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1)

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        result = self.pose.process(frame)  # RGB in, normalised landmarks out
        if not result.pose_landmarks:
            return []
        lm = result.pose_landmarks.landmark
        p = np.zeros((18, 3))
        for i, j in enumerate(MEDIAPIPE_TO_COCO18):
            if j is not None:
                p[i] = lm[j].x, lm[j].y, lm[j].visibility
        p[1] = (p[2, 0] + p[5, 0]) / 2, (p[2, 1] + p[5, 1]) / 2, min(p[2, 2], p[5, 2])
        p[p[:, 2] < 0.3, 2] = 0.0  # too unsure to draw
        return [p]


def extract(frames: np.ndarray, *, estimator=None) -> list[list[np.ndarray]]:
    """Per frame, the people found, as COCO-18 arrays."""
    estimator = estimator or MediaPipePose()
    return [estimator(np.ascontiguousarray(f)) for f in frames]


def extract_to_folder(frames: np.ndarray, out_dir: Path, *, estimator=None, quiet: bool = True) -> int:
    """0000.png skeletons and 0000.json keypoints per frame into a new (or empty) folder."""
    from PIL import Image
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise usage(f"{out_dir}: the folder is not empty; give a new one")
    estimator = estimator or MediaPipePose()
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    for i, f in enumerate(tqdm(frames, desc="pose", disable=quiet, leave=False)):
        people = estimator(np.ascontiguousarray(f))
        Image.fromarray(draw(people, w, h)).save(out_dir / f"{i:04d}.png")
        write_openpose_json(out_dir / f"{i:04d}.json", people, w, h)
    return len(frames)
