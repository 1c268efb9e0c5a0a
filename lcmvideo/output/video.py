"""Reading and writing clips: MP4 (H.264), GIF, PNG folders, atomically, with metadata.

Frames are numpy uint8 RGB (T, H, W, 3). Every output is written under a hidden temp name
beside the target and renamed into place only when complete, so an interrupted or failed
write never leaves a half file and never damages the previous output.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from ..errors import runtime, usage
from .atomic import replacing, write_text

FORMATS = ("mp4", "gif", "png")
EXTENSIONS = {".mp4": "mp4", ".gif": "gif"}
MAX_ARG = 100_000  # Linux caps one argv string at 128 KiB; longer metadata stays in the sidecar only
_FRAME_NAME = re.compile(r"\d{4,}\.png")


def format_for(out: Path, fmt: str | None) -> str:
    """The output format: `fmt` if given, else from the extension (none, a trailing slash or a folder: PNG)."""
    if fmt:
        if fmt not in FORMATS:
            raise usage(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
        return fmt
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir() or not Path(out).suffix:
        return "png"
    ext = Path(out).suffix.lower()
    if ext not in EXTENSIONS:
        raise usage(f"{out}: unknown output extension '{ext}'; use .mp4, .gif, a folder name without "
                    f"extension for PNG frames, or --format")
    return EXTENSIONS[ext]


def sidecar_path(out: Path) -> Path:
    """The metadata JSON beside an output: clip.mp4 -> clip.mp4.json, folder frames -> frames.json."""
    out = Path(out) if Path(out).name else Path(os.path.abspath(out))
    return out.with_name(out.name + ".json")


def check_writable(out: Path, fmt: str | None = None) -> None:
    """Fail with a usage error, before any heavy work, if `out` cannot be written as `fmt`."""
    fmt = format_for(out, fmt)
    out = Path(os.path.abspath(out))
    if not out.parent.is_dir():
        raise usage(f"{out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise usage(f"{out}: the folder {out.parent} is not writable")
    if fmt != "png" and out.is_dir():
        raise usage(f"{out}: is a folder; give a file name for the {fmt} output")
    if fmt == "png" and os.path.lexists(out):
        if not out.is_dir():
            raise usage(f"{out}: is a file; PNG frames need a folder name")
        # replacing a folder deletes it: only do that to one that holds nothing but frames
        other = next((p.name for p in out.iterdir() if not _FRAME_NAME.fullmatch(p.name)), None)
        if other:
            raise usage(f"{out}: the folder holds other files than frames (e.g. {other}); "
                        f"refusing to replace it, give a new folder name")


def write(frames: np.ndarray, out: Path, fps: float, fmt: str | None = None, metadata: dict | None = None,
          quiet: bool = True) -> Path:
    """Write a clip atomically, then its sidecar JSON (if `metadata`); return `out`.

    MP4 is H.264 yuv420p at crf 18 with +faststart; yuv420p needs even sides, so an odd
    width or height is padded by one repeated edge row/column (nothing is ever rescaled).
    GIF frame durations are whole centiseconds: 1000/fps ms is rounded per frame so the
    total stays exact (8 fps: 130, 120, 130, ... ms); faster than 50 fps plays at 50 fps.
    The metadata goes in the MP4 comment tag, the GIF comment and each PNG's tEXt `lcmvideo`
    chunk (MP4: only if under MAX_ARG characters, as it travels on ffmpeg's command line).
    """
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
            and frames.shape[-1] == 3 and min(frames.shape[:3]) >= 1):
        raise ValueError(f"frames must be a uint8 array (T, H, W, 3) with T >= 1, got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    fmt = format_for(out, fmt)
    check_writable(out, fmt)
    out = Path(out)
    # serialise first: a metadata mistake must not cost an encode
    comment = None if metadata is None else json.dumps(metadata, separators=(",", ":"), default=_json_default)
    side = None if metadata is None else json.dumps(metadata, indent=2, ensure_ascii=False, default=_json_default)

    from tqdm import tqdm

    with replacing(out, {"mp4": ".mp4", "gif": ".gif", "png": ""}[fmt], "write video") as tmp, \
            tqdm(total=len(frames), desc="encode", unit="frame", disable=quiet, leave=False) as bar:
        {"mp4": _write_mp4, "gif": _write_gif, "png": _write_png_dir}[fmt](frames, tmp, fps, comment, bar)
    if side is not None:
        write_text(sidecar_path(out), side + "\n")
    return out


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"metadata: a {type(o).__name__} is not JSON-serialisable")


def _write_mp4(frames, path: Path, fps: float, comment: str | None, bar) -> None:
    from fractions import Fraction

    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p stores chroma per 2x2 block: pad by repeating the last row/column
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    params = ["-crf", "18", "-movflags", "+faststart"]
    if comment and len(comment) < MAX_ARG:
        params += ["-metadata", f"comment={comment}"]
    # macro_block_size=2 is all yuv420p needs; the default 16 would rescale e.g. 72x40 to 80x48
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=Fraction(fps).limit_denominator(100_000), codec="libx264",
        pix_fmt_out="yuv420p", quality=None, macro_block_size=2, ffmpeg_log_level="error",
        output_params=params)
    try:
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
            bar.update()
    finally:
        writer.close()  # waits for ffmpeg to finish the file
    # write_frames never checks ffmpeg's exit status: count what actually landed in the file
    if _mp4_frame_count(path) != t:
        raise OSError(f"ffmpeg did not write all {t} frames")


def _mp4_frame_count(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as c:
            return c.streams.video[0].frames
    except (av.FFmpegError, OSError, IndexError):
        return 0


def _gif_durations(n: int, fps: float) -> list[int]:
    """Per-frame durations in ms, whole centiseconds whose running sum tracks n * 1000/fps."""
    step = max(100 / fps, 2)  # centiseconds; browsers play delays under 2 cs as 10 cs
    edges = [math.floor(i * step + 0.5) for i in range(n + 1)]
    return [10 * (b - a) for a, b in zip(edges, edges[1:])]


def _write_gif(frames, path: Path, fps: float, comment: str | None, bar) -> None:
    from PIL import GifImagePlugin, Image

    # Image.save(save_all=True) merges identical consecutive frames (summing their durations),
    # so frames are assembled here with Pillow's frame-level helpers: every frame is kept.
    with open(path, "wb") as fp:
        for i, (frame, ms) in enumerate(zip(frames, _gif_durations(len(frames), fps))):
            im = Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE)  # own palette per frame
            if i == 0:
                info = {"loop": 0, **({"comment": comment.encode()} if comment else {})}
                fp.write(b"".join(GifImagePlugin.getheader(im, info=info)[0]))
            fp.write(b"".join(GifImagePlugin.getdata(im, duration=ms, disposal=1, include_color_table=True)))
            bar.update()
        fp.write(b";")


def _write_png_dir(frames, folder: Path, fps: float, comment: str | None, bar) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir()
    info = PngInfo()
    if comment:
        info.add_text("lcmvideo", comment)  # ASCII JSON, as tEXt requires latin-1
    for name, frame in zip(_frame_names(len(frames)), frames):
        Image.fromarray(frame).save(folder / name, pnginfo=info)
        bar.update()


def _frame_names(n: int) -> list[str]:
    """0000.png, 0001.png, ...: 4 digits, more when n > 10000, so names sort in frame order."""
    digits = max(4, len(str(n - 1)))
    return [f"{i:0{digits}d}.png" for i in range(n)]


def read(path: Path) -> tuple[np.ndarray, float]:
    """Frames (T, H, W, 3) uint8 RGB and fps of an MP4/MOV/WebM/GIF file or a PNG folder."""
    frames, fps, _ = open_frames(path)
    out = list(frames)
    if not out:
        raise runtime(f"{path}: could not read video: no frames")
    return np.stack(out), fps


def open_frames(path: Path):
    """(frames, fps, count) of a video or PNG folder: `frames` yields (H, W, 3) uint8 RGB one at a time,
    decoded as it is pulled, so a caller that needs a span of a long video holds only that span;
    `count` is the container's frame count, or None where it does not say (some WebM files)."""
    path = Path(path)
    if not path.exists():
        raise usage(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files, fps = _png_files(path)
            frames, count = _png_frames(files), len(files)
        elif path.suffix.lower() == ".gif":
            frames, fps = _read_gif(path)  # GIFs are short, and their fps needs every frame's delay
            count = len(frames)
        else:
            frames, fps, count = _open_av(path)
    except (OSError, ValueError) as e:
        raise runtime(f"{path}: could not read video: {e}") from e
    return _reporting(frames, path), fps, count


def _reporting(frames, path: Path):
    """`frames`, with a decoding error met on the way reported as a runtime error naming the file."""
    import av

    try:
        yield from frames
    except (OSError, ValueError, av.FFmpegError) as e:
        raise runtime(f"{path}: could not read video: {e}") from e


def _png_files(path: Path) -> tuple[list[Path], float]:
    files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"),
                   key=lambda p: (int(p.stem) if p.stem.isdigit() else math.inf, p.name))
    if not files:
        raise ValueError("no .png frames in the folder")
    return files, _sidecar_fps(sidecar_path(path)) or 8.0


def _png_frames(files: list[Path]):
    from PIL import Image

    shape = None
    for p in files:
        with Image.open(p) as im:
            f = np.asarray(im.convert("RGB"))
        if shape is not None and f.shape != shape:
            raise ValueError("the frames differ in size")
        shape = f.shape
        yield f


def _sidecar_fps(side: Path) -> float | None:
    """fps recorded beside a PNG folder: top-level, settings or output "fps"; None if absent or unreadable."""
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        return float(next(m["fps"] for m in (meta, meta.get("settings"), meta.get("output"))
                          if isinstance(m, dict) and m.get("fps")))
    except (OSError, ValueError, TypeError, AttributeError, StopIteration):
        return None


def _read_gif(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence

    frames, ms = [], []
    with Image.open(path) as im:
        for f in ImageSequence.Iterator(im):
            frames.append(np.asarray(f.convert("RGB")))
            ms.append(f.info.get("duration") or 100)  # a missing or zero delay plays as 100 ms
    return np.stack(frames), 1000 * len(ms) / sum(ms)


def _open_av(path: Path):
    import av

    try:
        c = av.open(str(path))
    except av.FFmpegError as e:
        raise ValueError(str(e)) from e
    if not c.streams.video:
        c.close()
        raise ValueError("no video stream")
    stream = c.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate

    def frames():
        with c:
            for f in c.decode(stream):
                yield f.to_ndarray(format="rgb24")

    return frames(), float(rate) if rate else 8.0, stream.frames or None


def read_metadata(path: Path) -> dict | None:
    """The metadata JSON embedded in the container (MP4 comment, GIF comment, PNG tEXt), or None."""
    path = Path(path)
    if not path.exists():
        raise usage(f"{path}: no such file or folder")
    text = None
    try:
        if path.is_dir():
            from PIL import Image

            first = min((p for p in path.iterdir() if _FRAME_NAME.fullmatch(p.name)), default=None,
                        key=lambda p: int(p.stem))
            if first:
                with Image.open(first) as im:
                    text = im.text.get("lcmvideo")
        elif path.suffix.lower() == ".gif":
            from PIL import Image

            with Image.open(path) as im:
                text = im.info.get("comment")
        else:
            import av

            try:
                with av.open(str(path)) as c:
                    text = c.metadata.get("comment")
            except av.FFmpegError:
                return None
        return json.loads(text) if text else None
    except (OSError, ValueError):  # unreadable container or a comment that is not ours
        return None
