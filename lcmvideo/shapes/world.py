"""The shapes world: one coloured shape on a plain background, still or moving, with a caption.

Simple enough for a tiny model family to learn on a CPU, rich enough to test meaning:
colour and shape come from the prompt, motion from the motion module, position from a
ControlNet map. 64x64 RGB, clips of 16 frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64
FRAMES = 16
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 90, 235), "yellow": (240, 220, 40),
           "white": (245, 245, 245)}
BACKGROUNDS = {"black": (0, 0, 0), "gray": (110, 110, 110)}
MOTIONS = {"still": (0, 0), "moving right": (1, 0), "moving left": (-1, 0), "moving up": (0, -1),
           "moving down": (0, 1)}
RADIUS = (7, 10)  # half the shape's size, pixels
SPEED = (1.5, 2.2)  # pixels per frame when moving


@dataclass
class Scene:
    shape: str
    colour: str
    background: str
    x: float  # centre in pixels at the first frame
    y: float
    r: float
    motion: str = "still"
    speed: float = 0.0

    def at(self, frame: int) -> tuple[float, float]:
        dx, dy = MOTIONS[self.motion]
        return self.x + dx * self.speed * frame, self.y + dy * self.speed * frame


def sample(rng: np.random.Generator, frames: int = 1, motion: str | None = None) -> Scene:
    """A random scene whose shape stays fully inside the picture for `frames` frames."""
    motion = motion or (list(MOTIONS)[rng.integers(len(MOTIONS))] if frames > 1 else "still")
    r = float(rng.uniform(*RADIUS))
    speed = float(rng.uniform(*SPEED)) if motion != "still" else 0.0
    travel = speed * (frames - 1)
    dx, dy = MOTIONS[motion]
    lo, hi = r + 2, SIZE - r - 2

    def start(d):
        a, b = (lo, hi - travel) if d > 0 else ((lo + travel, hi) if d < 0 else (lo, hi))
        return float(rng.uniform(a, max(a, b)))

    return Scene(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
                 list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], start(dx), start(dy), r, motion, speed)


def draw(scene: Scene, frame: int = 0) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 picture of the scene at a frame, anti-aliased."""
    import cv2

    s = 8  # sub-pixel precision for cv2's integer coordinates
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    x, y = scene.at(frame)
    c = COLOURS[scene.colour]
    cx, cy, r = int(round(x * s)), int(round(y * s)), int(round(scene.r * s))
    if scene.shape == "circle":
        cv2.circle(img, (cx, cy), r, c, -1, cv2.LINE_AA, 3)
    elif scene.shape == "square":
        q = int(round(scene.r * 0.89 * s))  # about the circle's area
        cv2.rectangle(img, (cx - q, cy - q), (cx + q, cy + q), c, -1, cv2.LINE_AA, 3)
    else:
        # centroid at (x, y): apex 4/3 r above, base 2/3 r below
        h = scene.r * 1.15
        pts = np.array([[x, y - h * 4 / 3], [x - h * 1.15, y + h * 2 / 3], [x + h * 1.15, y + h * 2 / 3]]) * s
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], c, cv2.LINE_AA, 3)
    return img


def clip(scene: Scene, frames: int = FRAMES) -> np.ndarray:
    return np.stack([draw(scene, f) for f in range(frames)])


def caption(scene: Scene, rng: np.random.Generator | None = None, motion: bool = True) -> str:
    """'a red circle on a black background, moving right'; with `rng`, parts are dropped at random
    so short prompts ('a red circle') are understood too."""
    keep_bg = rng is None or rng.random() < 0.6
    keep_motion = motion and (rng is None or rng.random() < 0.7)
    text = f"a {scene.colour} {scene.shape}"
    if keep_bg:
        text += f" on a {scene.background} background"
    if keep_motion:
        text += f", {scene.motion}"
    return text


def position_map(x: float, y: float, size: int = SIZE, sigma: float = 4.0, height: int | None = None) -> np.ndarray:
    """ControlNet conditioning: a white blob centred where the shape should be, on black
    (`size` wide, `height` tall: square by default)."""
    yy, xx = np.mgrid[0:height or size, 0:size].astype(np.float32)
    blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
