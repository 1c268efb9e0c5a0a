"""The page's WebSocket protocol, and the checks on everything a client sends.

Browser -> server
  binary  a frame: 4-byte big-endian id, then a JPEG or PNG of the camera picture
  text    JSON {"type": "settings", "prompt"?, "strength"?, "steps"?, "seed"?, "similarity"?},
          {"type": "record", "on": bool}, {"type": "snapshot"}, {"type": "pause", "on": bool}
Server -> browser
  binary  a stylized frame: 4-byte big-endian length n, n bytes of a JSON header
          {"id", "seq", "latency_ms" (arrival to out), "work_ms" (the model's part), "fps", "prompt"},
          then a JPEG ("id" null for the server's source)
  text    JSON {"type": "hello", "params", "prompts", "size", "window", "watch", "limits"},
          {"type": "settings", "params"}, {"type": "dropped" | "skipped", "id"},
          {"type": "error", "id"?, "message"}, {"type": "recording" | "recorded" | "snapshot", "path"}
Every frame a client sends is answered once, under its id: a stylized frame, dropped (a newer one
replaced it, waiting for the model or waiting to go out), skipped (the similarity filter) or an
error. The page keeps up to `window` frames in flight and sends the next one when one is answered,
so nothing queues anywhere: the newest frame wins end to end. It keeps just one in flight where
the network's part of the round trip is small against the model's (`in_flight` below).

A frame is checked before it is decoded: its size in bytes, its kind (JPEG or PNG, from the first
bytes) and its pixel count, read from the JPEG's SOF or the PNG's IHDR header.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

from ..errors import usage

MAX_FRAME_BYTES = 4 << 20  # an encoded frame, once the 4-byte id is taken off
MAX_FRAME_PIXELS = 4096 * 2304  # about 9.4 megapixels: 4K and a little more
MAX_TEXT = 64 << 10  # a JSON message
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from a JPEG's or PNG's header alone; a usage error otherwise."""
    if data[:8] == PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise usage("frame: a PNG without its IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        return "PNG", w, h
    if data[:2] != b"\xff\xd8":
        raise usage("frame: not a JPEG or PNG image")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise usage("frame: a broken JPEG (no marker where one should be)")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise usage("frame: a broken JPEG (a segment shorter than its header)")
        if marker in JPEG_SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return "JPEG", w, h
        if marker in (0xDA, 0xD9):  # scan data or the end before any frame header
            break
        i += 2 + length
    raise usage("frame: a JPEG without a frame header (SOF) before its data")


def check_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES, max_pixels: int = MAX_FRAME_PIXELS):
    """(id, image bytes) of a binary message, or a usage error saying which limit it broke; the
    id is 0 where the message is too short to carry one."""
    if len(data) < 5:
        raise usage(f"frame: {len(data)} bytes; a frame is a 4-byte id and then a JPEG or PNG")
    (ident,) = struct.unpack(">I", data[:4])
    body = data[4:]
    if len(body) > max_bytes:
        raise FrameError(ident, f"frame {ident}: {len(body)} bytes, over the limit of {max_bytes}")
    try:
        kind, w, h = image_size(body)
    except Exception as e:  # noqa: BLE001 - usage errors, and struct errors on a cut header
        raise FrameError(ident, f"frame {ident}: {getattr(e, 'message', None) or 'an unreadable header'}") from None
    if w == 0 or h == 0 or w * h > max_pixels:
        raise FrameError(ident, f"frame {ident}: a {w}x{h} {kind}, over the limit of {max_pixels} pixels")
    return ident, body


class FrameError(Exception):
    """A frame refused before decoding; `ident` lets the answer carry the frame's id."""

    def __init__(self, ident: int, message: str):
        super().__init__(message)
        self.ident, self.message = ident, message


def decode_image(data: bytes) -> np.ndarray:
    """A checked JPEG/PNG -> (H, W, 3) uint8 RGB; a usage error if it does not decode."""
    from PIL import Image

    kind, w, h = image_size(data)
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as im:
            if im.size != (w, h):
                raise usage(f"frame: the header says {w}x{h}, the decoder {im.size[0]}x{im.size[1]}")
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise usage(f"frame: a {kind} that does not decode ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def parse_message(text: str) -> dict:
    """A text message as a dict with a known "type"; a usage error otherwise."""
    if len(text) > MAX_TEXT:
        raise usage(f"message: {len(text)} characters, over the limit of {MAX_TEXT}")
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise usage(f"message: not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise usage('message: a JSON object with a "type" was expected')
    if msg["type"] not in ("settings", "record", "snapshot", "pause"):
        raise usage(f"message: unknown type {msg['type'][:40]!r} (known: settings, record, snapshot, pause)")
    if msg["type"] in ("record", "pause") and not isinstance(msg.get("on", True), bool):
        raise usage(f"message: {msg['type']}'s \"on\" must be true or false")
    return msg


def encode_frame(ident, image: np.ndarray, info: dict, quality: int = 90) -> bytes:
    """A stylized frame as the server sends it: header length, JSON header, JPEG."""
    from PIL import Image

    head = json.dumps({"id": ident, "seq": info.get("seq"), "latency_ms": round(info.get("latency_ms", 0.0), 1),
                       "work_ms": round(info.get("work_ms", 0.0), 1),
                       "fps": round(info.get("fps", 0.0), 2), "prompt": info.get("prompt", "")}).encode()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return struct.pack(">I", len(head)) + head + buf.getvalue()


def in_flight(window: int, transit_ms: list, work_ms: list) -> int:
    """How many frames a client keeps in flight (the page's rule, app.js): the server's `window`
    while the network's part of a round trip (round trip less the server's latency) is over a
    quarter of the model's time per frame, so sending overlaps inference; one where it is not,
    so no frame waits at the server for the one before it. With fewer than 10 samples: `window`."""
    if window <= 2 and len(transit_ms) >= 10 and len(work_ms) >= 10:
        import statistics

        return 1 if statistics.median(transit_ms[-20:]) <= 0.25 * statistics.median(work_ms[-20:]) else window
    return window


def read_frame(data: bytes) -> tuple[dict, bytes]:
    """(header, JPEG) of a frame the server sent: for tests and benchmarks."""
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + n]), data[4 + n:]
