import json

import pytest

from lcmvideo import schedule
from lcmvideo.errors import LcmvideoError


def error(text, source="x.yaml"):
    with pytest.raises(LcmvideoError) as e:
        schedule.from_text(text, source)
    assert e.value.exit_code == 2
    return str(e.value)


def test_full_file(tmp_path):
    f = tmp_path / "clip.yaml"
    (tmp_path / "my.safetensors").write_bytes(b"")
    f.write_text("""
prompt: a red circle
negative_prompt: blurry
frames: 12
width: 96
height: 64
fps: 7.5
steps: 6
guidance: 1.5
seed: 7
models:
  base: my.safetensors
  lcm_lora_scale: 0.8
  loras: ["style.safetensors:0.6", {path: other.safetensors}]
output: out/clip.gif
""")
    s = schedule.load(f)
    assert [(k.frame, k.prompt) for k in s.resolved] == [(0, "a red circle")]
    assert (s.frames, s.width, s.height, s.fps, s.steps, s.guidance, s.seed) == (12, 96, 64, 7.5, 6, 1.5, 7)
    assert s.models.base == str(tmp_path / "my.safetensors")  # relative to the file
    assert s.models.lcm_lora_scale == 0.8
    assert [(r.path, r.weight) for r in s.models.loras] == [("style.safetensors", 0.6), ("other.safetensors", 1.0)]
    assert s.output == str(tmp_path / "out/clip.gif")


def test_json_file_reads_the_same(tmp_path):
    f = tmp_path / "clip.json"
    f.write_text(json.dumps({"keyframes": {"0": "a cat"}, "frames": 8, "seed": 3}))
    s = schedule.load(f)
    assert [(k.frame, k.prompt) for k in s.resolved] == [(0, "a cat")] and s.frames == 8 and s.seed == 3


@pytest.mark.parametrize("text, expected", [
    ("prompt: a\nframes: 1.5", "x.yaml: frames (line 2): expected a whole number of frames, got 1.5"),
    ("prompt: a\nwidth: 100", "x.yaml: width (line 2): must be a multiple of 8 (the VAE's scale factor), got 100"),
    ("prompt: a\nfoo: 1", "x.yaml: foo (line 2): unknown key; expected one of:"),
    ("prompt: a\nmodels:\n  bse: x", "x.yaml: models.bse (line 3): unknown key"),
    ("keyframes:\n  0: a\n  20: b", 'x.yaml: keyframes."20" (line 3): frame 20 is beyond the clip (frames: 16)'),
    ("keyframes:\n  4: a", "x.yaml: keyframes (line 1): frame 0 needs a prompt (the first keyframe is at frame 4)"),
    ("prompt: a\nseed: -1", "x.yaml: seed (line 2): must be at least 0, got -1"),
    ("prompt: a\nsteps: four", "x.yaml: steps (line 2): expected a whole number of steps, got 'four'"),
    ("prompt: a\nprompt: b", "x.yaml: prompt (line 2): duplicate key"),
    ("prompt: [a", "x.yaml (line 1): not valid YAML/JSON"),
    ("- a\n- b", "x.yaml: expected a mapping of settings at the top level"),
    ("prompt: a\nmodels:\n  loras: [\"x.safetensors:heavy\"]",
     "x.yaml: models.loras[0] (line 3): 'x.safetensors:heavy': the weight after ':' must be a number"),
    ("prompt: a\nkeyframes: {0: b}", "x.yaml: prompt (line 1): give either 'prompt' or 'keyframes', not both"),
])
def test_errors_name_file_key_and_line(text, expected):
    assert error(text).startswith(expected)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(LcmvideoError) as e:
        schedule.load(tmp_path / "nope.yaml")
    assert e.value.exit_code == 2 and "nope.yaml: no such schedule file" in str(e.value)


def test_overrides_win_over_the_file():
    s = schedule.from_text("prompt: a\nframes: 8\nseed: 1\nmodels: {base: x}")
    s = schedule.apply_overrides(s, prompt="b", frames=12, seed=None, base="y", loras=())
    assert [k.prompt for k in s.resolved] == ["b"] and s.frames == 12 and s.seed == 1 and s.models.base == "y"


def test_parse_lora():
    assert schedule.parse_lora("a/b.safetensors:0.5") == schedule.LoraRef("a/b.safetensors", 0.5)
    assert schedule.parse_lora("a/b.safetensors") == schedule.LoraRef("a/b.safetensors", 1.0)
    assert schedule.parse_lora("C:\\loras\\x.safetensors") == schedule.LoraRef("C:\\loras\\x.safetensors", 1.0)


def test_sidecar_is_a_schedule(tmp_path):
    s = schedule.from_text("prompt: a cat\nframes: 8\nseed: 5")
    side = tmp_path / "clip.mp4.json"
    side.write_text(json.dumps({"lcmvideo": {"version": "x"}, "settings": s.to_dict(), "versions": {}}))
    again = schedule.load(side)
    assert [k.prompt for k in again.resolved] == ["a cat"] and again.seed == 5 and again.frames == 8


def test_finishing_and_overriding_return_new_settings():
    """Settings are values: finish() and flags give a new object and leave the given one alone."""
    s = schedule.Settings(prompt="a red circle", frames=8)
    done = schedule.finish(s)
    assert s.prompt == "a red circle" and s.keyframes == {} and s.resolved == []
    assert done is not s and done.keyframes == {"0": {"prompt": "a red circle"}} and len(done.resolved) == 1
    over = schedule.from_source(done, frames=12, base="/models/x", context_length=8)
    assert done.frames == 8 and done.models.base is None and done.context.length == 16
    assert over.frames == 12 and over.models.base == "/models/x" and over.context.length == 8
    assert over.sources == {"base": "flag"} and done.sources == {}


def test_provenance_is_declared_and_stays_out_of_the_file(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("prompt: a red circle\nframes: 8\n")
    s = schedule.from_source(f, seed=3)
    assert s.where.source == str(f) and s.job is None
    d = s.to_dict()
    assert not {"where", "sources", "job", "resolved", "warnings"} & set(d) and d["seed"] == 3
