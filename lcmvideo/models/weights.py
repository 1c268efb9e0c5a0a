"""Reading weights files: safetensors headers without torch, and state dicts loaded safely.

Pickle-based files (.ckpt, .pt, .bin) are opened with `torch.load(weights_only=True)` only:
a file that needs more than plain tensors to unpickle is refused, never run.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import runtime, usage

WEIGHT_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header, without torch; catches truncation."""
    return safetensors_header(path)[0]


def safetensors_header(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(tensor names and shapes, the `__metadata__` strings) of a .safetensors file, without torch."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise ValueError("header length is past the end of the file")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise runtime(f"{path}: unreadable or truncated .safetensors file ({e})") from None
    except OSError as e:
        raise runtime(f"{path}: cannot read: {e.strerror}") from None
    meta = header.pop("__metadata__", None) or {}
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end > size:
        raise runtime(f"{path}: truncated .safetensors file ({size} bytes, the header needs {8 + n + end})")
    return {k: t["shape"] for k, t in header.items()}, meta if isinstance(meta, dict) else {}


def load_state_dict(path: Path) -> dict:
    """All tensors of a weights file. Pickle files are opened with weights_only=True: never full unpickling."""
    import torch

    if path.suffix == ".safetensors":
        safetensors_shapes(path)  # clear error for truncated files before safetensors' own
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise runtime(f"{path}: unreadable .safetensors file ({e})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise runtime(f"{path}: holds pickled objects beyond plain tensors; lcmvideo will not unpickle them. "
                          "Convert the file to .safetensors") from None
        raise runtime(f"{path}: unreadable or truncated weights file ({msg})") from None
    while isinstance(sd, dict) and len(sd) < 8 and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise usage(f"{path}: does not hold a dictionary of tensors")
    out = {k: v for k, v in sd.items() if hasattr(v, "shape")}
    # one level of nesting, named "outer.inner": A1111's embeddings keep theirs in string_to_param["*"]
    for k, v in sd.items():
        if isinstance(v, dict) and isinstance(k, str):
            out.update({f"{k}.{i}": t for i, t in v.items() if isinstance(i, str) and hasattr(t, "shape")})
    return out


def shapes(path: Path) -> dict[str, list[int]]:
    if path.suffix == ".safetensors":
        return safetensors_shapes(path)
    return {k: list(v.shape) for k, v in load_state_dict(path).items()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise usage(f"{path}: unreadable config ({e})") from None
