"""YAML/JSON text to Python with the line of every key, so that every error can name the file,
the key path and the line. JSON files are read by the same YAML loader (JSON is YAML).
"""

from __future__ import annotations

from typing import Any

from ..errors import usage


class Index(int):
    """A list position in a key path, shown as [i]."""


class Where:
    """Maps key paths to source lines, so errors can say where."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[tuple, int] = {}

    def at(self, path: tuple) -> str:
        keys = "".join(f"[{p}]" if isinstance(p, Index) else "." + _quote(p) for p in path).lstrip(".")
        line = self.lines.get(path)
        return keys + (f" (line {line})" if line else "")

    def __call__(self, path: tuple, message: str) -> Exception:
        at = self.at(path)
        return usage(f"{self.source}: {at}: {message}" if at else f"{self.source}: {message}")


def _quote(key) -> str:
    text = str(key)
    return f'"{text}"' if isinstance(key, (int, float)) or is_number(text) else text


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def compose(text: str, where: Where) -> Any:
    """YAML -> Python, recording the line of every mapping key and list item."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise usage(f"{where.source}{at}: not valid YAML/JSON: {problem}") from None
    if node is None:
        return {}
    loader = yaml.SafeLoader("")

    def scalar(n):
        try:
            return loader.construct_object(n, deep=True)
        except yaml.YAMLError as e:
            raise usage(f"{where.source} (line {n.start_mark.line + 1}): {e}") from None

    def build(n, path):
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = scalar(k)
                if isinstance(key, (list, dict)) or key is None:
                    raise usage(f"{where.source} (line {k.start_mark.line + 1}): a key must be a name or a number")
                where.lines[path + (key,)] = k.start_mark.line + 1
                if key in out:
                    raise where(path + (key,), "duplicate key")
                out[key] = build(v, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            out = []
            for i, v in enumerate(n.value):
                where.lines[path + (Index(i),)] = v.start_mark.line + 1
                out.append(build(v, path + (Index(i),)))
            return out
        return scalar(n)

    try:
        return build(node, ())
    finally:
        loader.dispose()
