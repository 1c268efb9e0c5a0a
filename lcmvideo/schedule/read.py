"""Schedules from files (lcmvideo YAML/JSON, a render's sidecar, imported formats) and flags."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import usage
from . import comfy, fizz, importers, media
from .parse import Where, compose
from .settings import MODEL_KEYS, SIDECAR_MARK, Settings
from .validate import apply_overrides, from_dict


def _imported(path: Path) -> tuple[list[tuple[dict, list[str]]] | None, Where, object]:
    """(the clips of a file in another tool's format, or None for lcmvideo's own; where; the parsed data)."""
    where = Where(str(path))
    suffix = path.suffix.lower()
    if suffix in media.PNG or suffix in media.VIDEO:
        data = media.embedded_workflow(path)
        if SIDECAR_MARK in data:  # an lcmvideo render: the settings it was made with
            return None, where, data
        return comfy.from_workflow(data, where), where, None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise usage(f"{path}: no such schedule file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise usage(f"{path}: cannot read the schedule file: {e}") from None
    if suffix == ".txt":
        if fizz.looks_like_schedule(text):
            return fizz.from_text(text, where), where, None
        return importers.from_prompt_box(text, where), where, None
    data = compose(text, where)
    if not isinstance(data, dict) or (SIDECAR_MARK in data and "settings" in data):
        return None, where, data
    if comfy.is_workflow(data):
        return comfy.from_workflow(data, where), where, None
    if any(k in data for k in ("prompt_map", "n_prompt", "motion_module", "lora_map")) or (
            isinstance(data.get("prompt"), list) or isinstance(data.get("prompts"), list)):
        return importers.from_animatediff_json(data, where), where, None
    return None, where, data


def clips(path: Path) -> int:
    """How many clips a file holds: several for the older AnimateDiff config's prompt list."""
    items = _imported(Path(path))[0]
    return len(items) if items else 1


def load(path: Path, clip: int | None = None) -> Settings:
    """Read a schedule file, an earlier render's sidecar JSON, or an imported format (`clip`: which
    of its clips, for a file holding several; the first by default)."""
    path = Path(path)
    items, where, data = _imported(path)
    if items is not None:
        if clip is not None and not 0 <= clip < len(items):
            raise usage(f"{path}: clip {clip} asked for, but the file holds {len(items)}")
        data, notes = items[clip or 0]
        if clip is None and len(items) > 1:
            notes = notes + [f"{path}: {len(items)} clips (one per prompt); this is the first, "
                             "`lcmvideo render` renders them all"]
        notes = list(notes)
        s = from_dict(importers.supported(data, str(path), notes), where, path.parent)
        s.warnings[:0] = notes
        return s
    if isinstance(data, dict) and SIDECAR_MARK in data and "settings" in data:
        sub = Where(str(path))
        sub.lines = {k[1:]: v for k, v in where.lines.items() if k[:1] == ("settings",)}
        return from_dict(data["settings"], sub, None)
    return from_dict(data, where, path.parent)


def from_text(text: str, source: str = "<schedule>") -> Settings:
    where = Where(source)
    return from_dict(compose(text, where), where)


def from_source(source=None, clip: int | None = None, **flags) -> Settings:
    """A schedule file (or an already read Settings, left as it is, or nothing) with CLI-like flags
    applied; `sources` of the result says which model settings came from flags."""
    if isinstance(source, Settings):
        s = source
    else:
        s = load(Path(source), clip) if source is not None else Settings()
    s = apply_overrides(s, **flags)
    s.sources = {**s.sources, **{k: "flag" for k, v in flags.items() if (k in MODEL_KEYS or k.startswith("ip_"))
                                 and v not in (None, ())}}
    return s


def dumps(s: Settings) -> str:
    return json.dumps(s.to_dict(), indent=2)
