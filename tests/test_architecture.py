"""The package's layout holds: imports go down the data flow, never up, and never in a circle.

The graph is read from the source (every import statement, the ones inside functions too),
so an import that only runs on some path counts as much as one at the top of a file.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lcmvideo"
# Lowest first. A module may import from its own layer and the layers below it.
LAYERS = [
    ("lcmvideo.errors", "lcmvideo.paths", "lcmvideo.version"),
    ("lcmvideo.schedule", "lcmvideo.shapes"),  # pure settings; the shapes world's drawing and reading
    ("lcmvideo.output",),  # frames in and out
    ("lcmvideo.models",),
    ("lcmvideo.pipeline",),
    ("lcmvideo.live", "lcmvideo.window", "lcmvideo.web", "lcmvideo.batch", "lcmvideo.api", "lcmvideo.app", "lcmvideo.cli",
     "lcmvideo.__main__", "lcmvideo"),
]
MODEL_LIBRARIES = {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in a module: lcmvideo's own resolved to the
    submodule where one is named (`from . import video` -> lcmvideo.output.video), others by top name."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def layer(name: str) -> int:
    best, rank = -1, None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} is in no layer: add it to LAYERS"
    return rank


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


def test_no_upward_import():
    wrong = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)}) at line {line}"
             for m in MODULES for t, line in imports(m) if t in MODULES and layer(t) > layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    g, state, cycles = graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(g[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path, monkeypatch):
    """The rules above can fail: a module that imports upward inside a function, or two that import
    each other, are caught."""
    fake = {"lcmvideo.schedule.x": tmp_path / "x.py", "lcmvideo.schedule.y": tmp_path / "y.py"}
    fake["lcmvideo.schedule.x"].write_text("def f():\n    from ..pipeline import text2video\n    from . import y\n")
    fake["lcmvideo.schedule.y"].write_text("from . import x\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {**MODULES, **fake})
    with pytest.raises(AssertionError, match="lcmvideo.schedule.x .* imports lcmvideo.pipeline.text2video"):
        test_no_upward_import()
    with pytest.raises(AssertionError, match="lcmvideo.schedule.x -> lcmvideo.schedule.y -> lcmvideo.schedule.x"):
        test_no_import_cycle()


@pytest.mark.parametrize("package", ["lcmvideo.schedule", "lcmvideo.output", "lcmvideo.shapes"])
def test_lower_layers_need_no_model_library(package):
    """Schedules, frames I/O and the shapes world work without torch: `plan` stays instant."""
    found = [f"{m}:{line} imports {t}" for m in MODULES if m == package or m.startswith(package + ".")
             for t, line in imports(m) if t.split(".")[0] in MODEL_LIBRARIES]
    assert not found, "\n".join(found)


def test_training_is_not_part_of_the_package():
    assert not any("train" in Path(p).stem for p in MODULES.values())
    assert not [f"{m} imports {t}" for m in MODULES for t, _ in imports(m) if t.split(".")[0] == "training"]


def test_python_m_lcmvideo_is_the_cli():
    r = subprocess.run([sys.executable, "-m", "lcmvideo", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: lcmvideo ") and "render" in r.stdout and "restyle" in r.stdout
    r = subprocess.run([sys.executable, "-m", "lcmvideo", "plan", str(ROOT / "prompts" / "hello.yaml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "16 frames" in r.stdout, r.stdout + r.stderr
