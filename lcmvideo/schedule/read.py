"""Schedules from files (lcmvideo YAML/JSON, a render's sidecar, imported formats) and flags."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import usage
from . import importers
from .parse import Where, compose
from .settings import MODEL_KEYS, SIDECAR_MARK, Settings
from .validate import apply_overrides, from_dict


def load(path: Path) -> Settings:
    """Read a schedule file, an earlier render's sidecar JSON, or an imported format."""
    path = Path(path)
    where = Where(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise usage(f"{path}: no such schedule file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise usage(f"{path}: cannot read the schedule file: {e}") from None
    if path.suffix.lower() == ".txt":
        data, notes = importers.from_prompt_box(text, where)
        s = from_dict(data, where, path.parent)
        s.warnings[:0] = notes
        return s
    data = compose(text, where)
    if isinstance(data, dict) and SIDECAR_MARK in data and "settings" in data:
        sub = Where(str(path))
        sub.lines = {k[1:]: v for k, v in where.lines.items() if k[:1] == ("settings",)}
        return from_dict(data["settings"], sub, None)
    if isinstance(data, dict) and "prompt_map" in data:
        data, notes = importers.from_prompt_travel_json(data, where)
        s = from_dict(data, where, path.parent)
        s.warnings[:0] = notes
        return s
    return from_dict(data, where, path.parent)


def from_text(text: str, source: str = "<schedule>") -> Settings:
    where = Where(source)
    return from_dict(compose(text, where), where)


def from_source(source=None, **flags) -> Settings:
    """A schedule file (or an already read Settings, left as it is, or nothing) with CLI-like flags
    applied; `sources` of the result says which model settings came from flags."""
    if isinstance(source, Settings):
        s = source
    else:
        s = load(Path(source)) if source is not None else Settings()
    s = apply_overrides(s, **flags)
    s.sources = {**s.sources, **{k: "flag" for k, v in flags.items() if (k in MODEL_KEYS or k.startswith("ip_"))
                                 and v not in (None, ())}}
    return s


def dumps(s: Settings) -> str:
    return json.dumps(s.to_dict(), indent=2)
