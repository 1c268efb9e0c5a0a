"""Prompt travel: the schedule's constructs, the per-frame plan, imports, and what reaches the UNet."""

import json
import math

import pytest
import torch
from conftest import render_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcmvideo import schedule
from lcmvideo.errors import LcmvideoError
from lcmvideo.pipeline import text as prompts
from lcmvideo.pipeline import text2video


def plan_of(text, **kw):
    s = schedule.from_text(text, "t.yaml")
    return s, schedule.plan(s)


def rounded(row):
    return [(i, round(w, 9)) for i, w in row.blend]


def test_negative_and_fractional_keys_resolve():
    s, rows = plan_of("frames: 17\nkeyframes:\n  0: a\n  0.5: b\n  -1: c\n  '-5': d")
    assert [(k.frame, k.prompt) for k in s.resolved] == [(0, "a"), (8, "b"), (12, "d"), (16, "c")]
    assert rows[8].blend == [(1, 1.0)] and rows[16].blend == [(3, 1.0)]


def test_linear_blend_weights_and_hold():
    _, rows = plan_of("frames: 9\nkeyframes: {0: a, 8: b}")
    assert rows[0].blend == [(0, 1.0)]
    assert rows[4].blend == [(0, 0.5), (1, 0.5)]
    assert rows[8].blend == [(1, 1.0)]
    _, rows = plan_of("frames: 9\nhold: 0.5\nkeyframes: {0: a, 8: b}")
    assert [r.blend for r in rows[:5]] == [[(0, 1.0)]] * 5  # held for half the gap
    assert rounded(rows[6]) == [(0, 0.5), (1, 0.5)]
    _, rows = plan_of("frames: 9\nkeyframes: {0: a, 8: {prompt: b}, 4: {prompt: m, hold: 0.5}}")
    assert rows[5].blend == [(1, 1.0)] and rounded(rows[7]) == [(1, 0.5), (2, 0.5)]


def test_no_loop_by_default_and_opt_in_loop():
    _, rows = plan_of("frames: 8\nkeyframes: {0: a, 4: b}")
    assert all(r.blend == [(1, 1.0)] for r in rows[4:])  # the last keyframe holds to the end
    _, rows = plan_of("frames: 8\nloop: true\nkeyframes: {0: a, 4: b}")
    assert rows[6].blend == [(1, 0.5), (0, 0.5)]  # blending back to the first keyframe


def test_parameters_travel_from_their_global_value():
    s, rows = plan_of("""
frames: 11
guidance: 1.0
strength: 0.4
models: {loras: [{path: w.safetensors, name: water, weight: 0.2}]}
keyframes:
  0: a
  10: {prompt: b, guidance: 2.0, lora_weights: {water: 1.2}, lcm_lora_scale: 0.5}
""")
    assert [round(r.params["guidance"], 3) for r in rows] == [round(1 + i / 10, 3) for i in range(11)]
    assert rows[5].params["lora:water"] == pytest.approx(0.7)
    assert rows[5].params["lcm_lora_scale"] == pytest.approx(0.75)
    assert all(r.params["strength"] == 0.4 for r in rows)
    assert schedule.travels_lora(s)


def test_head_tail_and_negative_per_keyframe():
    s, _ = plan_of("head: hd\ntail: tl\nnegative_prompt: bad\nkeyframes:\n  0: a\n  8: {prompt: b, negative_prompt: ugly}")
    assert [schedule.full_prompt(s, k) for k in s.resolved] == ["hd, a, tl", "hd, b, tl"]
    assert [schedule.negative_for(s, k) for k in s.resolved] == ["bad", "ugly"]


@pytest.mark.parametrize("text, expected", [
    ("keyframes: {0: a, 1.5: b}", 't.yaml: keyframes."1.5" (line 1): fraction 1.5 is beyond the clip (frames: 16)'),
    ("keyframes: {0: a, -17: b}", 't.yaml: keyframes."-17" (line 1): frame -17 is beyond the clip (frames: 16)'),
    ("keyframes: {0: a, x: b}", "t.yaml: keyframes.x (line 1): a keyframe's key must be a frame number"),
    ("keyframes:\n  0: {prompt: a, guidnce: 2}", "t.yaml: keyframes.\"0\".guidnce (line 2): unknown key"),
    ("keyframes:\n  0: {guidance: 2}", 't.yaml: keyframes."0" (line 2): missing key \'prompt\''),
    ("keyframes:\n  0: {prompt: a, strength: 1.5}", 't.yaml: keyframes."0".strength (line 2): must be at most 1.0'),
    ("keyframes:\n  0: {prompt: a, lora_weights: {x: 1}}", "no LoRA named 'x' in models.loras (none are loaded)"),
    ("prompt: a\ninterpolation: cubic", "t.yaml: interpolation (line 2): expected one of linear, slerp, got 'cubic'"),
    ("prompt: a\nhold: 1", "t.yaml: hold (line 2): must be at most 0.99"),
    ("prompt: a\ncontext: {length: 8, overlap: 8}", "t.yaml: context.overlap (line 2): must be less than"),
    ("prompt: a\nloop: yes please", "t.yaml: loop (line 2): expected true or false"),
])
def test_travel_errors(text, expected):
    with pytest.raises(LcmvideoError) as e:
        schedule.from_text(text, "t.yaml")
    assert expected in str(e.value) and e.value.exit_code == 2


def test_lint_warnings():
    s = schedule.from_text("frames: 16\nsteps: 12\nguidance: 7\nkeyframes: {0: a, 2: b, 0.5: c, 8: d}", "t.yaml")
    w = "\n".join(s.warnings)
    assert 'keyframes."0.5" (line 4) and keyframes."8" (line 4) both resolve to frame 8' in w
    assert "frames 0 and 2 are 2 frame(s) apart" in w
    assert "guidance 7 is outside LCM's useful range 1-2" in w
    assert "12 steps is outside LCM's useful range 1-8" in w
    assert schedule.from_text("prompt: a", "t.yaml").warnings == []


def test_weighted_terms():
    assert prompts.parse_weights("a (red:1.3) [cat]") == [("a ", 1.0), ("red", 1.3), (" ", 1.0), ("cat", 1 / 1.1)]
    assert prompts.parse_weights("((x))") == [("x", pytest.approx(1.21))]
    assert prompts.parse_weights(r"\(not\) weighted") == [("(not) weighted", 1.0)]


def test_weights_change_only_their_tokens(tiny_models):
    pipe = tiny_models.pipe
    with torch.inference_mode():
        plain = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a red circle")
        same = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a (red:1.0) circle")
        heavy = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a (red:1.5) circle")
        ref, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    assert torch.equal(plain, ref)  # unweighted prompts encode exactly as diffusers does
    assert torch.equal(plain, same)
    changed = (heavy - plain).abs().amax(-1)[0]
    assert changed[2] > changed[1] and changed[2] > changed[3]  # 'red' (token 2) moves most


def test_weighted_mean_is_restored_only_where_it_means_something(tiny_models):
    """A1111's rescale to the unweighted mean divides by the weighted mean: with a zero-mean encoder
    output (a LayerNorm without learnt bias) that is 0/0, and the prompt must still encode finitely."""
    tok = tiny_models.pipe.tokenizer

    class Encoder:
        device = torch.device("cpu")

        def __init__(self, offset):
            self.offset = offset

        def __call__(self, ids):
            g = torch.Generator().manual_seed(0)
            z = torch.randn(1, ids.shape[1], 8, generator=g)
            return (z - z.mean() + self.offset,)

    centred = prompts.encode(Encoder(0.0), tok, "a (red:1.5) circle")
    plain = prompts.encode(Encoder(0.0), tok, "a red circle")
    assert torch.isfinite(centred).all()
    assert torch.allclose(centred[0, 2], 1.5 * plain[0, 2]) and torch.equal(centred[0, 1], plain[0, 1])
    shifted = prompts.encode(Encoder(0.5), tok, "a (red:1.5) circle")
    assert shifted.mean().item() == pytest.approx(0.5, abs=1e-5)  # A1111's rescale where the mean is real


def test_long_prompts_are_chunked(tiny_models):
    pipe = tiny_models.pipe
    long = ", ".join(["a red circle on a black background"] * 12)
    assert prompts.n_chunks(pipe.tokenizer, long) == 2
    with torch.inference_mode():
        assert prompts.encode(pipe.text_encoder, pipe.tokenizer, long).shape[1] == 154
        assert prompts.encode(pipe.text_encoder, pipe.tokenizer, "short", chunks=2).shape[1] == 154


class Spy:
    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append((args, kwargs))

    def close(self):
        self.handle.remove()


def test_keyframe_prompts_reach_their_frames(tiny_models):
    pipe = tiny_models.pipe
    s = render_settings(frames=9, steps=1)
    s.keyframes = {"0": "a red circle", "8": "a blue square"}
    text_spy, unet_spy = Spy(pipe.text_encoder), Spy(pipe.unet)
    try:
        text2video.render(tiny_models, s)
    finally:
        text_spy.close(), unet_spy.close()
    assert len(text_spy.calls) == 2  # once per distinct prompt, not per frame
    ehs = unet_spy.calls[0][1]["encoder_hidden_states"]
    assert ehs.shape[0] == 9
    with torch.inference_mode():
        a = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a red circle")[0]
        b = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a blue square")[0]
    assert torch.allclose(ehs[0], a) and torch.allclose(ehs[8], b)
    mid = ehs[4]
    assert torch.allclose(mid, (a + b) / 2, atol=1e-6)
    da = [(ehs[i] - a).norm().item() for i in range(9)]
    assert da == sorted(da)  # frames move steadily away from A


def test_slerp_keeps_norms_between(tiny_models):
    pipe = tiny_models.pipe
    with torch.inference_mode():
        a = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a red circle")[0]
        b = prompts.encode(pipe.text_encoder, pipe.tokenizer, "a blue square")[0]
    m = prompts.slerp(a, b, 0.5)
    lo = torch.minimum(a.norm(dim=-1), b.norm(dim=-1)) - 1e-4
    hi = torch.maximum(a.norm(dim=-1), b.norm(dim=-1)) + 1e-4
    assert bool(((m.norm(dim=-1) >= lo) & (m.norm(dim=-1) <= hi)).all())
    assert torch.equal(prompts.slerp(a, b, 0.0), a) and torch.equal(prompts.slerp(a, b, 1.0), b)


def test_guidance_travel_runs_cfg_per_frame(tiny_models):
    s = render_settings(frames=4, steps=1)
    s.keyframes = {"0": {"prompt": "a", "guidance": 1.0}, "3": {"prompt": "b", "guidance": 2.0}}
    spy = Spy(tiny_models.pipe.unet)
    try:
        frames = text2video.render(tiny_models, s)
    finally:
        spy.close()
    assert frames.shape[0] == 4
    assert spy.calls[0][0][0].shape[0] == 2  # CFG batch: negative and positive


@pytest.mark.parametrize("frames", [64, 128])
def test_long_clips_render_in_windows(tiny_models, frames):
    spy = Spy(tiny_models.pipe.unet)
    try:
        out = text2video.render(tiny_models, render_settings(frames=frames, steps=1))
    finally:
        spy.close()
    assert out.shape == (frames, 64, 64, 3)
    lengths = {c[0][0].shape[2] for c in spy.calls}
    assert lengths == {16}  # the motion module never sees more than its context
    assert sum(c[0][0].shape[0] for c in spy.calls) == len(schedule.windows(frames, 16, 4))  # windows batched


def test_windows_cover_every_frame():
    for frames in (1, 16, 17, 33, 64, 100):
        for length, overlap in ((16, 4), (8, 2), (16, 0)):
            wins = schedule.windows(frames, length, overlap)
            assert sorted({i for w in wins for i in w}) == list(range(frames))
            assert all(len(w) == min(frames, length) for w in wins)
    looped = schedule.windows(20, 8, 2, loop=True)
    assert sorted({i for w in looped for i in w}) == list(range(20))
    assert any(19 in w and 0 in w for w in looped)  # the end is denoised next to the start


def test_lora_weight_travel_sets_adapters_per_window(tiny_dir, monkeypatch):
    from lcmvideo import models
    from lcmvideo.schedule import ModelPaths

    s = render_settings(frames=24, steps=1)
    s.keyframes = {"0": {"prompt": "a", "lcm_lora_scale": 0.0}, "23": {"prompt": "a", "lcm_lora_scale": 1.0}}
    spec = models.resolve(ModelPaths(base=str(tiny_dir), motion=str(tiny_dir / "motion_adapter"),
                                     lcm_lora=str(tiny_dir / "lcm_lora"), fuse=False))
    loaded = models.load(spec)
    seen = []
    real = loaded.pipe.set_adapters
    monkeypatch.setattr(loaded.pipe, "set_adapters", lambda names, adapter_weights: (
        seen.append(adapter_weights[0]), real(names, adapter_weights=adapter_weights)))
    text2video.render(loaded, s)
    assert len(seen) == 2 and seen[0] < seen[1]  # two windows, rising LCM-LoRA scale


def test_import_prompt_travel_json(tmp_path):
    f = tmp_path / "prompt_travel.json"
    f.write_text(json.dumps({
        "name": "sample", "path": "share/Stable-diffusion/model.safetensors",
        "motion_module": "models/motion-module/mm_sd_v14.ckpt", "compile": False, "seed": [341774366206100],
        "scheduler": "k_dpmpp_sde", "steps": 8, "guidance_scale": 1.5, "clip_skip": 2,
        "head_prompt": "masterpiece", "prompt_map": {"0": "smile", "32": "(walking:1.2)", "64": "running"},
        "tail_prompt": "detailed background", "n_prompt": ["worst quality"],
        "lora_map": {"share/Lora/muffet.safetensors": 0.8}, "controlnet_map": {"input_image_dir": "x"},
        "output": {"format": "gif", "fps": 8}}))
    s = schedule.load(f)
    assert [(k.frame, k.prompt) for k in s.resolved] == [(0, "smile"), (32, "(walking:1.2)"), (64, "running")]
    assert (s.head, s.tail, s.negative_prompt, s.seed, s.steps, s.guidance, s.fps, s.format, s.frames) == (
        "masterpiece", "detailed background", "worst quality", 341774366206100, 8, 1.5, 8, "gif", 80)
    assert [(r.path, r.weight) for r in s.models.loras] == [("share/Lora/muffet.safetensors", 0.8)]
    assert s.models.clip_skip == 2
    notes = "\n".join(s.warnings)
    for lost in ("scheduler 'k_dpmpp_sde' not carried over", "controlnet_map: no enabled ControlNet type",
                 "frames: not in this format"):
        assert lost in notes
    assert "clip_skip" not in notes


def test_import_a1111_prompt_box(tmp_path):
    f = tmp_path / "box.txt"
    f.write_text("masterpiece, best quality, <lora:detail:0.7>\n1girl\n0: closed eyes\n8: open eyes\n"
                 "16: smile\nwind, (ultra detailed)\n")
    s = schedule.load(f)
    assert s.head == "masterpiece, best quality, 1girl"
    assert "<lora:...> tags are not applied" in s.warnings[0]
    assert s.tail == "wind, (ultra detailed)"
    assert [(k.frame, k.prompt) for k in s.resolved] == [(0, "closed eyes"), (8, "open eyes"), (16, "smile")]
    assert s.frames == 17
    bad = tmp_path / "bad.txt"
    bad.write_text("0: a\ntail\n8: b\n")
    with pytest.raises(LcmvideoError, match=r"bad.txt \(line 3\): a keyframe line after the tail lines"):
        schedule.load(bad)


def test_plan_command_needs_no_torch(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "t.yaml"
    f.write_text("frames: 8\nkeyframes: {0: a, 4: {prompt: b, guidance: 2}}\n")
    code = ("import sys, json\nfrom lcmvideo.cli import main\ntry:\n    main(['plan', '--json', sys.argv[1]])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, check=True)
    assert out.stderr.strip().endswith("False")
    t = json.loads(out.stdout)
    assert t["rows"][2]["blend"] == [{"keyframe": 0, "weight": 0.5}, {"keyframe": 4, "weight": 0.5}]
    assert t["rows"][2]["params"]["guidance"] == 1.5


keys = st.one_of(st.integers(-40, 40), st.floats(-2, 2, allow_nan=False), st.text(max_size=4))
values = st.one_of(st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans(),
                   st.dictionaries(st.sampled_from(["prompt", "hold", "guidance", "strength", "x", "lora_weights"]),
                                   st.one_of(st.text(max_size=5), st.floats(-2, 3, allow_nan=False), st.none()),
                                   max_size=3))
docs = st.fixed_dictionaries({}, optional={
    "frames": st.one_of(st.integers(-2, 70), st.floats(0, 40), st.text(max_size=3)),
    "keyframes": st.dictionaries(keys, values, max_size=5),
    "prompt": st.one_of(st.text(max_size=10), st.integers()),
    "hold": st.floats(-1, 2, allow_nan=False), "loop": st.one_of(st.booleans(), st.integers(0, 1)),
    "interpolation": st.sampled_from(["linear", "slerp", "cubic", ""]),
    "context": st.dictionaries(st.sampled_from(["length", "overlap", "x"]), st.integers(-2, 70), max_size=2),
    "guidance": st.floats(-1, 40, allow_nan=False), "steps": st.integers(-1, 120),
    "width": st.integers(0, 600), "bogus": st.integers(),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs)
def test_any_input_gives_a_plan_or_a_clean_error(doc):
    try:
        s = schedule.from_text(json.dumps(doc), "h.json")
    except LcmvideoError as e:
        assert e.exit_code == 2 and str(e).startswith("h.json")
        return
    if s.resolved:
        rows = schedule.plan(s)
        assert len(rows) == s.frames
        for r in rows:
            assert math.isclose(sum(w for _, w in r.blend), 1.0, abs_tol=1e-9)
            assert all(0 <= s.resolved[i].frame < s.frames for i, _ in r.blend)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_file_gives_settings_or_a_clean_error(text):
    try:
        schedule.from_text(text, "h.yaml")
    except LcmvideoError as e:
        assert e.exit_code == 2


def test_convert_writes_a_schedule_that_plans_the_same(tmp_path):
    from click.testing import CliRunner

    from lcmvideo.cli import cli

    src = tmp_path / "pt.json"
    src.write_text(json.dumps({"seed": [5], "steps": 6, "head_prompt": "hq", "prompt_map": {"0": "a", "16": "b"},
                               "scheduler": "ddim"}))
    out = tmp_path / "s.yaml"
    r = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "scheduler 'ddim' not carried over" in r.stderr
    a, b = schedule.load(src), schedule.load(out)
    assert [(k.frame, schedule.full_prompt(a, k)) for k in a.resolved] == [
        (k.frame, schedule.full_prompt(b, k)) for k in b.resolved] == [(0, "hq, a"), (16, "hq, b")]
    assert (b.seed, b.steps, b.frames) == (5, 6, 32)
    assert "context" not in out.read_text()  # defaults are left out


def test_plan_text_output(tmp_path):
    from click.testing import CliRunner

    from lcmvideo.cli import cli

    f = tmp_path / "t.yaml"
    f.write_text("frames: 5\nsteps: 12\nkeyframes: {0: a, 4: {prompt: b, guidance: 2}}\n")
    r = CliRunner().invoke(cli, ["plan", str(f)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "5 frames, 2 keyframe(s)" in lines[0]
    assert any(ln.split()[:1] == ["2"] and "50% @0 + 50% @4" in ln and ln.rstrip().endswith("1.500") for ln in lines)
    assert "12 steps is outside LCM's useful range" in r.stdout
