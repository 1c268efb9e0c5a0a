"""Reads a shapes-world frame back: background, dominant shape colour, centroid, area.

Shared by the tests and benchmarks/shapes_quality.py, so a model's output can be checked
for meaning (the colour the prompt asked for, the position the ControlNet map set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import BACKGROUNDS, COLOURS

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], np.float32)


@dataclass
class Reading:
    colour: str | None  # nearest palette colour of the shape's pixels; None if no shape was found
    x: float  # centroid, pixels
    y: float
    area: int  # shape pixels
    background: str
    shares: dict  # palette colour -> fraction of shape pixels nearest to it


def background_of(frame: np.ndarray) -> np.ndarray:
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def read(frame: np.ndarray, threshold: float = 60.0) -> Reading:
    """One (H, W, 3) uint8 frame."""
    f = frame.astype(np.float32)
    bg = background_of(frame)
    bg_name = min(BACKGROUNDS, key=lambda n: np.abs(np.array(BACKGROUNDS[n]) - bg).sum())
    mask = np.linalg.norm(f - bg, axis=2) > threshold
    area = int(mask.sum())
    if area < 4:
        return Reading(None, float("nan"), float("nan"), area, bg_name, {})
    px = f[mask]
    nearest = np.argmin(((px[:, None, :] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(_NAMES))
    shares = {n: float(c) / area for n, c in zip(_NAMES, counts)}
    ys, xs = np.nonzero(mask)
    return Reading(_NAMES[int(counts.argmax())], float(xs.mean()), float(ys.mean()), area, bg_name, shares)


def read_clip(frames: np.ndarray) -> list[Reading]:
    return [read(f) for f in frames]
