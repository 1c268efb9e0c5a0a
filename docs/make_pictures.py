"""Make the README's pictures from what the first command really renders.

    python docs/make_pictures.py      # docs/images/hello.gif and docs/images/hello-sheet.png

Both are `lcmvideo render prompts/hello.yaml` on the shipped shapes-world family (the
default), enlarged: the GIF plays the clip, the sheet shows its 16 frames in two rows.
tests/test_docs.py renders the clip again and fails when the sheet no longer shows it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGES = Path(__file__).parent / "images"
SCHEDULE = ROOT / "prompts" / "hello.yaml"
GIF_SCALE, SHEET_SCALE, GAP = 4, 2, 4


def render() -> tuple[np.ndarray, float]:
    from lcmvideo import Session, load_schedule

    s = load_schedule(SCHEDULE)
    return Session().render(s), s.fps


def sheet(frames: np.ndarray, rows: int = 2) -> np.ndarray:
    """The frames in `rows` rows, each enlarged SHEET_SCALE times, GAP pixels of white between."""
    big = frames.repeat(SHEET_SCALE, axis=1).repeat(SHEET_SCALE, axis=2)
    t, h, w, _ = big.shape
    cols = -(-t // rows)
    out = np.full((rows * h + (rows - 1) * GAP, cols * w + (cols - 1) * GAP, 3), 255, np.uint8)
    for i, f in enumerate(big):
        r, c = divmod(i, cols)
        out[r * (h + GAP):r * (h + GAP) + h, c * (w + GAP):c * (w + GAP) + w] = f
    return out


def main():
    from PIL import Image

    from lcmvideo.output import video

    frames, fps = render()
    IMAGES.mkdir(exist_ok=True)
    Image.fromarray(sheet(frames)).save(IMAGES / "hello-sheet.png", optimize=True)
    gif = IMAGES / "hello.gif"
    video.write(frames.repeat(GIF_SCALE, axis=1).repeat(GIF_SCALE, axis=2), gif, fps, "gif")
    print(f"wrote {IMAGES / 'hello-sheet.png'} and {gif}")


if __name__ == "__main__":
    main()
