"""Atomic writes: every output goes to a temp name beside its target and is renamed into place
only when complete, so an interrupted or failed write (Ctrl-C, a full disk) never leaves a half
file and never damages the previous one. The one helper every writer in lcmvideo uses."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import runtime


def temp_beside(out: Path, ext: str = "") -> Path:
    # not mkstemp/mkdtemp: those create 0600/0700 entries, and the rename would keep that mode
    out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{ext}")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def reason(e: OSError) -> str:
    if isinstance(e, BrokenPipeError) or "Broken pipe" in str(e):
        return "ffmpeg stopped early (its message, if any, is above)"
    return e.strerror or str(e).splitlines()[0]


def swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` over `out`; a folder cannot be replaced in one rename, so the old one goes aside first."""
    if not tmp.is_dir() or not os.path.lexists(out):
        os.replace(tmp, out)
        return
    old = tmp.with_name(tmp.name + ".old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    remove(old)


@contextmanager
def replacing(out: Path, ext: str = "", what: str = "write"):
    """`with replacing(out) as tmp:` write `tmp` (a file or folder); it becomes `out` when the block
    ends, or is removed on any exception. An OSError becomes one runtime error naming `out`."""
    out = Path(out)
    tmp = temp_beside(out, ext)
    try:
        yield tmp
        swap_in(tmp, out)
    except BaseException as e:  # KeyboardInterrupt too: never leave a temp behind
        remove(tmp)
        if isinstance(e, OSError):
            raise runtime(f"{out}: could not {what}: {reason(e)}") from e
        raise


def write_text(path: Path, text: str, what: str = "write metadata") -> None:
    """Write a small text file atomically."""
    with replacing(path, Path(path).suffix, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
