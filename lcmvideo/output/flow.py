"""Optical flow, warping and the flicker measure (warping error), with OpenCV's DIS flow.

Warping error after Lai et al. 2018, "Learning Blind Video Temporal Consistency": flow is
taken on the *source* frames, pixels that fail the forward/backward check (occlusions,
Sundaram et al. 2010) are left out, and the error is the mean L1 distance between each
output frame and the previous output frame warped onto it, on a 0-1 scale.
"""

from __future__ import annotations

import numpy as np


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow: where each pixel of `a` moves to in `b` (DIS, medium preset)."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(_gray(a), _gray(b), None)


def warp(image: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Sample `image` at (x, y) + f(x, y): with f = flow(current, previous), the previous frame
    brought onto the current one. Works for uint8 frames and float arrays of any channel count."""
    import cv2

    h, w = f.shape[:2]
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xx + f[..., 0], yy + f[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def valid_mask(back: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of the current frame whose backward flow the forward flow undoes."""
    fw = warp(fwd, back)  # forward flow of the previous frame, at the current frame's pixels
    s = back + fw
    return (s**2).sum(-1) <= 0.01 * ((back**2).sum(-1) + (fw**2).sum(-1)) + 0.5


def motion(reference: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each frame t >= 1 of a clip: the flow back to t-1 and the mask of pixels it holds for."""
    out = []
    for t in range(1, len(reference)):
        back, fwd = flow(reference[t], reference[t - 1]), flow(reference[t - 1], reference[t])
        out.append((back, valid_mask(back, fwd)))
    return out


def warping_error(frames: np.ndarray, reference: np.ndarray | None = None, flows=None) -> float:
    """Mean occlusion-masked L1 (0-1) between frame t and frame t-1 warped by the reference's flow
    (`flows`: the reference's motion(), when it is already known)."""
    ref = frames if reference is None else reference
    if len(frames) != len(ref):
        raise ValueError(f"{len(frames)} frames against a reference of {len(ref)}")
    if len(frames) < 2:
        return 0.0
    errs = []
    for t, (back, m) in enumerate(motion(ref) if flows is None else flows, start=1):
        if not m.any():
            continue
        d = np.abs(frames[t].astype(np.float32) - warp(frames[t - 1], back).astype(np.float32)) / 255.0
        errs.append(float(d[m].mean()))
    return float(np.mean(errs)) if errs else 0.0


def frame_difference(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames (0-1), no motion compensation."""
    if len(frames) < 2:
        return 0.0
    f = frames.astype(np.float32)
    return float(np.abs(f[1:] - f[:-1]).mean() / 255.0)


def report(output: np.ndarray, source: np.ndarray | None = None) -> dict:
    """Flicker numbers of an output, with the source's own as the baseline when given."""
    flows = motion(output if source is None else source)  # the slow part: once for both numbers
    r = {"warping_error": round(warping_error(output, source, flows), 5),
         "frame_difference": round(frame_difference(output), 5)}
    if source is not None:
        r["source_warping_error"] = round(warping_error(source, flows=flows), 5)
        r["source_frame_difference"] = round(frame_difference(source), 5)
    return r
