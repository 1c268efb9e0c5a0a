"""Reading and writing clips: MP4 (H.264), GIF, PNG folders, atomically, with metadata.

Frames are numpy uint8 RGB (T, H, W, 3). Every output goes to a hidden temp name beside
the target and is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import runtime, usage

FORMATS = ("mp4", "gif", "png")
EXTENSIONS = {".mp4": "mp4", ".gif": "gif"}


def format_for(out: Path, fmt: str | None) -> str:
    """The output format: `fmt` if given, else from the extension (none or a folder = PNG frames)."""
    if fmt:
        if fmt not in FORMATS:
            raise usage(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
        return fmt
    out = Path(out)
    if str(out).endswith(("/", os.sep)) or out.is_dir() or not out.suffix:
        return "png"
    ext = out.suffix.lower()
    if ext not in EXTENSIONS:
        raise usage(f"{out}: unknown output extension '{ext}'; use .mp4, .gif, or a folder name for PNG frames")
    return EXTENSIONS[ext]


def sidecar_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".json")


def check_writable(out: Path, fmt: str | None = None) -> None:
    """Fail before any heavy work if the output cannot be written."""
    out = Path(out)
    fmt = fmt or format_for(out, None)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise usage(f"{out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise usage(f"{out}: the folder {parent} is not writable")
    if fmt == "png" and out.exists() and not out.is_dir():
        raise usage(f"{out}: is a file; PNG frames need a folder name")
    if fmt != "png" and out.is_dir():
        raise usage(f"{out}: is a folder; give a file name ending in .{fmt}")


def _check_frames(frames: np.ndarray):
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
            and frames.shape[-1] == 3 and frames.shape[0] >= 1):
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got "
                         f"{getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}")


def _bar(total, quiet):
    from tqdm import tqdm

    return tqdm(total=total, desc="encode", disable=quiet, leave=False)


def _write_mp4(frames, path: Path, fps: float, comment: str | None, quiet: bool):
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sides: pad by repeating the edge
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    params = ["-movflags", "+faststart", "-crf", "18"]
    if comment:
        params += ["-metadata", f"comment={comment}"]
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
        output_params=params, quality=None, ffmpeg_log_level="error")
    writer.send(None)
    bar = _bar(t, quiet)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
            bar.update()
    finally:
        bar.close()
        writer.close()


def _write_gif(frames, path: Path, fps: float, comment: str | None, quiet: bool):
    from PIL import Image

    # GIF stores centiseconds; Pillow rounds the milliseconds we give it down to 10 ms steps
    duration = int(round(1000 / fps))
    images = [Image.fromarray(f) for f in frames]
    extra = {"comment": comment.encode()} if comment else {}
    with _bar(len(images), quiet) as bar:
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=duration,
                       disposal=1, optimize=False, **extra)
        bar.update(len(images))


def _write_png_dir(frames, folder: Path, comment: str | None, quiet: bool):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir()
    digits = max(4, len(str(len(frames) - 1)))
    info = None
    if comment:
        info = PngInfo()
        info.add_text("lcmvideo", comment)
    with _bar(len(frames), quiet) as bar:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(folder / f"{i:0{digits}d}.png", pnginfo=info)
            bar.update()


def write(frames: np.ndarray, out: Path, fps: float, fmt: str | None = None, metadata: dict | None = None,
          quiet: bool = True) -> Path:
    """Write a clip atomically (temp beside the target, then rename), then its sidecar JSON."""
    _check_frames(frames)
    out = Path(out)
    fmt = format_for(out, fmt)
    comment = json.dumps(metadata, separators=(",", ":")) if metadata is not None else None
    parent = out.resolve().parent
    suffix = {"mp4": ".mp4", "gif": ".gif", "png": ""}[fmt]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent)) / f"part{suffix}"
    try:
        if fmt == "mp4":
            _write_mp4(frames, tmp, fps, comment, quiet)
        elif fmt == "gif":
            _write_gif(frames, tmp, fps, comment, quiet)
        else:
            _write_png_dir(frames, tmp, comment, quiet)
        if fmt == "png" and out.exists():
            old = tmp.parent / "old"
            os.replace(out, old)
        os.replace(tmp, out)
        if metadata is not None:
            side = tmp.parent / "side.json"
            side.write_text(json.dumps(metadata, indent=2))
            os.replace(side, sidecar_path(out))
    except (OSError, RuntimeError, BrokenPipeError) as e:
        raise runtime(f"{out}: could not write video: {e}") from None
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return out


def read(path: Path) -> tuple[np.ndarray, float]:
    """Frames (T, H, W, 3) uint8 RGB and fps of an MP4/MOV/WebM/GIF file or a PNG folder."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
        fps = 8.0
        side = sidecar_path(path)
        if side.exists():
            meta = json.loads(side.read_text())
            fps = float(meta.get("output", {}).get("fps") or meta.get("fps") or fps)
        return frames, fps
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            frames, durations = [], []
            for f in ImageSequence.Iterator(im):
                frames.append(np.asarray(f.convert("RGB")))
                durations.append(f.info.get("duration", 100))
        return np.stack(frames), 1000.0 / (sum(durations) / len(durations))
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    return frames, fps


def read_metadata(path: Path) -> dict | None:
    """The metadata JSON embedded in the container, or None."""
    path = Path(path)
    try:
        if path.is_dir():
            from PIL import Image

            first = sorted(path.glob("*.png"))[0]
            with Image.open(first) as im:
                text = im.text.get("lcmvideo")
        elif path.suffix.lower() == ".gif":
            from PIL import Image

            with Image.open(path) as im:
                text = im.info.get("comment")
                text = text.decode() if isinstance(text, bytes) else text
        else:
            import av

            with av.open(str(path)) as c:
                text = c.metadata.get("comment")
        return json.loads(text) if text else None
    except (OSError, IndexError, ValueError):
        return None
