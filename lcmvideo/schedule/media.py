"""The ComfyUI workflow inside the files ComfyUI writes, read with the standard library.

- PNG (SaveImage, and VideoHelperSuite's first-frame PNG): text chunks `workflow` (the UI format)
  and `prompt` (the API format), as tEXt, zTXt or iTXt.
- MP4/MOV written by VideoHelperSuite's Video Combine: ffmpeg metadata tags `workflow` and
  `prompt` (older versions: one `comment`), stored as `data` atoms in the MP4's `moov` box; the
  JSON values are found by their content, so the tag layout (udta/ilst or mdta keys) does not matter.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from ..errors import usage
from .settings import SIDECAR_MARK

PNG = (".png",)
VIDEO = (".mp4", ".mov", ".m4v")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(path: Path) -> dict[str, str]:
    """A PNG's text chunks, keyword -> text."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise usage(f"{path}: not a PNG file")
        out = {}
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            size, kind = struct.unpack(">I4s", head)
            body = f.read(size)
            f.read(4)  # CRC
            if len(body) < size:
                break
            try:
                if kind == b"tEXt":
                    key, _, text = body.partition(b"\0")
                    out[key.decode("latin-1")] = text.decode("latin-1")
                elif kind == b"zTXt":
                    key, _, rest = body.partition(b"\0")
                    out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
                elif kind == b"iTXt":
                    key, _, rest = body.partition(b"\0")
                    compressed, rest = rest[0], rest[2:]
                    _lang, _, rest = rest.partition(b"\0")
                    _tkey, _, text = rest.partition(b"\0")
                    out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
            except (zlib.error, UnicodeDecodeError, IndexError):
                continue
            if kind == b"IEND":
                break
        return out


def _moov(path: Path) -> bytes | None:
    """The `moov` box of an MP4, read alone (the media data around it can be large)."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        i = 0
        while i + 8 <= end:
            f.seek(i)
            size, kind = struct.unpack(">I4s", f.read(8))
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", f.read(8))[0], 16
            elif size == 0:
                size = end - i
            if size < head or i + size > end:
                return None
            if kind == b"moov":
                return f.read(size - head) if size < 256 * 2**20 else None
            i += size
    return None


def mp4_texts(path: Path) -> list[str]:
    """The text values of an MP4's metadata (`data` atoms anywhere in `moov`)."""
    blob = _moov(path)
    if blob is None:
        raise usage(f"{path}: not an MP4/MOV file with metadata (no moov box)")
    texts: list[str] = []
    e = len(blob)
    j = blob.find(b"data")
    while j >= 0:  # every metadata value is a `data` atom: size, "data", type 1 (UTF-8), locale, text
        size = struct.unpack(">I", blob[j - 4:j])[0] if j >= 4 else 0
        if blob[j + 4:j + 8] == b"\0\0\0\1" and 16 <= size <= e - j + 4:
            try:
                texts.append(blob[j + 12:j - 4 + size].decode("utf-8"))
            except UnicodeDecodeError:
                pass
        j = blob.find(b"data", j + 4)
    return texts


def embedded_workflow(path: Path) -> dict:
    """The workflow ComfyUI stored in a PNG or a Video Combine MP4: the UI format when there (it has
    every node), else the API format; for lcmvideo's own outputs, the sidecar they carry."""
    if not path.is_file():
        raise usage(f"{path}: no such file")
    texts = list(png_text(path).values()) if path.suffix.lower() in PNG else mp4_texts(path)
    found: dict[str, dict] = {}
    for t in texts:
        try:
            v = json.loads(t)
        except ValueError:
            continue
        if isinstance(v, str):  # a tag holding JSON text once more
            try:
                v = json.loads(v)
            except ValueError:
                continue
        if not isinstance(v, dict):
            continue
        if SIDECAR_MARK in v and isinstance(v.get("settings"), dict):  # lcmvideo's own output: its sidecar
            found.setdefault("sidecar", v)
        for part in (v, v.get("workflow"), v.get("prompt")):  # an old single `comment` holds both
            if isinstance(part, str):
                try:
                    part = json.loads(part)
                except ValueError:
                    continue
            if isinstance(part, dict) and isinstance(part.get("nodes"), list):
                found.setdefault("workflow", part)
            elif isinstance(part, dict) and part and all(isinstance(n, dict) and "class_type" in n
                                                         for n in part.values()):
                found.setdefault("prompt", part)
    if not found:
        raise usage(f"{path}: no ComfyUI workflow in it (no 'workflow' or 'prompt' metadata)")
    return found.get("workflow") or found.get("prompt") or found["sidecar"]
