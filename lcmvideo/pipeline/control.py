"""ControlNet conditioning: where each frame's conditioning image comes from, and loading it.

Sources (one per ControlNet entry): a folder of images numbered by frame (sparse allowed),
a single image for every frame, a video, a folder of OpenPose JSON files, or a video of a
person whose pose is extracted (the `pose` extra). Every conditioning image is fitted to the
render size with `fit()`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import usage
from ..output.images import IMAGE_EXTS, fit, read_image
from ..schedule import ANNOTATED, INPUT, ControlSpec, FrameRow, Settings

CANNY = (100, 200)  # ControlNet 1.1's canny annotator thresholds


SIZE = re.compile(r"^(\d+)[xX](\d+)$")


def source_size(size, what: str) -> tuple[int, int]:
    """A canvas size given as [width, height], 'WxH', or an image/video whose size it is (the one
    OpenPose read the poses from)."""
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    m = SIZE.match(str(size))
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        return int(m.group(1)), int(m.group(2))
    path = Path(str(size)).expanduser()
    if not path.exists():
        raise usage(f"{what}: {size}: give the poses' source size as WIDTHxHEIGHT or an image/video "
                    "they came from (no such file)")
    if path.suffix.lower() in IMAGE_EXTS:
        img = read_image(path)
    else:
        from ..output import video

        frames, _, _ = video.open_frames(path)
        img = next(iter(frames), None)
        if img is None:
            raise usage(f"{what}: {path}: the video has no frames to take the poses' size from")
    return int(img.shape[1]), int(img.shape[0])


def from_flag(model: str, source: str) -> ControlSpec:
    """`--controlnet MODEL SOURCE`: the source's kind from what it is (MODEL 'embedded' = the tiny one).
    `SOURCE@WxH` or `SOURCE@VIDEO` gives the canvas of OpenPose JSON written in pixels."""
    size = None
    if "@" in source and not Path(source).expanduser().exists():
        source, _, given = source.rpartition("@")
        size = list(source_size(given, "--controlnet"))
    path = Path(source).expanduser()
    model = None if model.lower() in ("embedded", "default") else model
    if path.is_dir():
        kind = "openpose" if any(path.glob("*.json")) and not any(
            p.suffix.lower() in IMAGE_EXTS for p in path.iterdir()) else "images"
    elif path.suffix.lower() in IMAGE_EXTS:
        kind = "images"
    elif path.exists():
        kind = "video"
    else:
        raise usage(f"--controlnet: {source}: no such image, folder or video")
    return ControlSpec(model=model, size=size, **{kind: str(path.resolve())})


def stamp(spec: ControlSpec) -> tuple:
    """Modification times of a source, so cached conditioning is dropped when its files change."""
    path = Path(spec.source[1]).expanduser()
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple((p.name, p.stat().st_mtime_ns) for p in files if p.exists())


def _numbered(folder: Path, exts, frames: int, what: str) -> dict[int, Path]:
    from .pose import frame_number

    if not folder.is_dir():
        raise usage(f"{folder}: no such folder of {what}")
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in exts:
            continue
        n = frame_number(p)
        if n is None:
            raise usage(f"{p}: no frame number in the file name (expected e.g. 0016{p.suffix})")
        if n >= frames:
            raise usage(f"{p}: frame {n} is beyond the clip (frames: {frames})")
        if n in found:
            raise usage(f"{p}: frame {n} given twice (also {found[n].name})")
        found[n] = p
    if not found:
        raise usage(f"{folder}: no {what} files ({', '.join(exts)}) in the folder")
    return found


def _spread(found: dict[int, object], frames: int, missing: str) -> list:
    """Per frame: its own item, or with `nearest` the closest numbered one (ties go earlier)."""
    if missing == "none":
        return [found.get(f) for f in range(frames)]
    keys = sorted(found)
    return [found[min(keys, key=lambda k: (abs(k - f), k))] for f in range(frames)]


def video_frame_count(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            if stream.frames:
                return stream.frames
            return sum(1 for _ in c.decode(stream))
    except (OSError, av.error.FFmpegError, IndexError) as e:
        raise usage(f"{path}: not a readable video ({e})") from None


def _video_indices(n: int, frames: int, spec: ControlSpec, path: Path) -> list[int]:
    if n == frames:
        return list(range(frames))
    if spec.count == "stretch":
        return [round(i * (n - 1) / max(1, frames - 1)) for i in range(frames)]
    raise usage(f"{path}: {n} frames, but the clip has {frames}; set count: stretch to resample it "
                "evenly, or change frames")


def assignment(spec: ControlSpec, frames: int) -> list[str | None]:
    """What each frame is conditioned on, as text (for `plan`), without decoding images."""
    kind, src = spec.source
    path = Path(src).expanduser()
    if kind == "images" and path.is_file():
        return [path.name] * frames
    if kind in ("images", "openpose"):
        exts = IMAGE_EXTS if kind == "images" else (".json",)
        found = _numbered(path, exts, frames, "image" if kind == "images" else "OpenPose JSON")
        return [p.name if p else None for p in _spread(found, frames, spec.missing)]
    if not path.is_file():
        raise usage(f"{path}: no such video")
    idx = _video_indices(video_frame_count(path), frames, spec, path)
    return [f"{path.name}#{i}" for i in idx]


def annotate(kind: str, frames: np.ndarray) -> np.ndarray:
    """Conditioning maps (T, H, W, 3) uint8 made from video frames by the `kind` source's annotator."""
    if kind == "pose_from":
        from . import pose

        people = pose.extract(frames)
        return np.stack([pose.draw(p, frames.shape[2], frames.shape[1]) for p in people])
    if kind == "canny_from":
        import cv2

        edges = [cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), *CANNY) for f in frames]
        return np.repeat(np.stack(edges)[..., None], 3, axis=3)
    if kind != "position_from":
        raise ValueError(f"no annotator for {kind}")
    from ..shapes import analyse, world

    h, w = frames.shape[1:3]
    maps = []
    for f in frames:
        r = analyse.read(f)
        maps.append(np.zeros((h, w, 3), np.uint8) if r.colour is None else
                    world.position_map(r.x, r.y, size=w, height=h, sigma=4.0 * min(h, w) / world.SIZE))
    return np.stack(maps)


def load(spec: ControlSpec, frames: int, width: int, height: int,
         input_frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Conditioning images (T, H, W, 3) uint8 fitted to the render size, and which frames have one.
    `input_frames` are the restyled clip's own frames, for `pose_from: <input>`."""
    kind, src = spec.source
    path = Path(src).expanduser()
    out = np.zeros((frames, height, width, 3), np.uint8)
    present = np.ones(frames, bool)
    if kind == "images" and path.is_file():
        out[:] = fit(read_image(path), width, height, spec.fit)
    elif kind in ("images", "openpose"):
        exts = IMAGE_EXTS if kind == "images" else (".json",)
        found = _numbered(path, exts, frames, "image" if kind == "images" else "OpenPose JSON")
        cache: dict[Path, np.ndarray] = {}
        for f, p in enumerate(_spread(found, frames, spec.missing)):
            if p is None:
                present[f] = False
                continue
            if p not in cache:
                if kind == "images":
                    img = read_image(p)
                else:
                    from . import pose

                    size = source_size(spec.size, "controlnet.size") if spec.size else None
                    people = pose.read_openpose_json(p, size=size)
                    w, h = size or (width, height)
                    img = pose.draw(people, w, h)
                cache[p] = fit(img, width, height, spec.fit)
            out[f] = cache[p]
    elif src == INPUT:
        if input_frames is None or kind not in ANNOTATED:
            raise usage(f"controlnet: {kind}: {INPUT} means the input of a restyle; there is none here")
        picked = input_frames
    else:
        from ..output import video

        if not path.is_file():
            raise usage(f"{path}: no such video")
        src_frames, _ = video.read(path)
        idx = _video_indices(len(src_frames), frames, spec, path)
        picked = src_frames[idx]
    if kind == "video" or kind in ANNOTATED:
        if kind in ANNOTATED:
            picked = annotate(kind, picked)
        for f in range(frames):
            out[f] = fit(picked[f], width, height, spec.fit)
    return out, present


def prepare_controls(models, s: Settings, rows: list[FrameRow], cache: dict | None = None,
                     input_frames=None) -> list:
    """Load each ControlNet (once per path) and its conditioning images for this clip
    (`input_frames`: a restyle's input, for poses of the input itself)."""
    import torch

    from ..models import resolve_controlnet
    from .denoise import Control

    out = []
    dtype, device = models.pipe.unet.dtype, models.spec.device
    for i, spec in enumerate(s.controlnet):
        ref = resolve_controlnet(spec.model, models.spec, f"controlnet[{i}].model")
        net = models.controlnet(ref)
        key = (repr(spec), s.frames, s.width, s.height, stamp(spec))
        known = {} if cache is None else cache.setdefault("control", {})
        if key not in known:
            known[key] = load(spec, s.frames, s.width, s.height, input_frames)
        images, present = known[key]
        scale = [spec.scale * r.params["controlnet_scale"] * float(p) for r, p in zip(rows, present)]
        out.append(Control(net, torch.from_numpy(images).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0,
                           torch.tensor(scale, device=device, dtype=dtype), spec.start, spec.end))
    return out
