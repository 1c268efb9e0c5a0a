"""Single images: reading them, and fitting a frame to a size (crop, pad or stretch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import usage

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def fit(image: np.ndarray, width: int, height: int, rule: str = "crop") -> np.ndarray:
    """Resize an RGB image to (height, width): crop = cover then centre-crop (no bars, no
    distortion), pad = fit inside then centre on black, stretch = ignore the aspect ratio."""
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if rule == "stretch":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if w > width else cv2.INTER_CUBIC)
    scale = max(width / w, height / h) if rule == "crop" else min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if rule == "crop":
        x, y = (nw - width) // 2, (nh - height) // 2
        return np.ascontiguousarray(resized[y:y + height, x:x + width])
    out = np.zeros((height, width, 3), np.uint8)
    x, y = (width - nw) // 2, (height - nh) // 2
    out[y:y + nh, x:x + nw] = resized
    return out


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise usage(f"{path}: not a readable image ({e})") from None
