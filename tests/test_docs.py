"""The docs stay true: the CLI reference is the commands' own --help, links lead somewhere, the
README stays short and its picture is what its first command renders."""

import importlib.util
import re
from pathlib import Path

import click
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_matches_help():
    want = script("make_cli_reference").reference()
    assert (DOCS / "cli.md").read_text() == want, "docs/cli.md is stale: run python docs/make_cli_reference.py"


def commands():
    from lcmvideo.cli import cli

    out = []

    def walk(cmd, path):
        out.append((" ".join(path), cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    walk(cli, ["lcmvideo"])
    return out


@pytest.mark.parametrize("path,command", commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_help_ends_with_examples(path, command):
    ctx = click.Context(command, info_name=path.split()[-1], **command.context_settings)
    lines = [ln.strip() for ln in command.get_help(ctx).rstrip().splitlines()]
    tail = lines[lines.index(next(ln for ln in reversed(lines) if ln.startswith("Example"))):]
    examples = [ln for ln in tail[1:] if ln.startswith("lcmvideo ")]
    assert 1 <= len(examples) <= 3 and tail[-1].startswith(("lcmvideo ", "--")), tail


def test_help_describes_the_embedded_family_truthfully():
    from lcmvideo.cli import cli

    text = cli.get_help(click.Context(cli, info_name="lcmvideo")).lower()
    assert "untrained" not in text and "shapes-world" in text


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 350
    text = "\n".join(lines)
    assert "docs/images/hello-sheet.png" in text and "python -m pytest" in text
    assert 'pip install -e ".[test]"' in text and "lcmvideo render prompts/hello.yaml" in text


def links(path: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "training/shapes/NOTES.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(page):
    missing = [t for t in links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: {missing}"


def test_the_readme_picture_is_what_hello_yaml_renders(monkeypatch):
    from PIL import Image

    from lcmvideo.models import embedded

    monkeypatch.setenv("LCMVIDEO_EMBEDDED", "shapes")  # the family a user gets (conftest picks the twin)
    if not embedded.has_shipped():
        pytest.skip("the shapes weights are not shipped in this checkout")
    pictures = script("make_pictures")
    frames, _ = pictures.render()
    shown = np.asarray(Image.open(DOCS / "images" / "hello-sheet.png").convert("RGB")).astype(int)
    now = pictures.sheet(frames).astype(int)
    assert now.shape == shown.shape
    # library versions move CPU results by a level or two; a changed model or schedule moves them far more
    assert np.abs(now - shown).mean() < 2.0, "docs/images are stale: run python docs/make_pictures.py"
