"""The shipped shapes family's motion LoRAs move the shape their way (read back by the analyser)."""

import numpy as np
import pytest

from lcmvideo.models import embedded
from lcmvideo.shapes import world
from training.shapes import quality

LORAS = embedded.shipped() / "motion_lora"
DIRECTIONS = ("right", "left", "up", "down")
# benchmarks/shapes_quality.py's clips: 5 prompts x 4 seeds, so that 90 % is 18 of 20, not all of a few
PROMPTS, SEEDS = quality.MOTION_PROMPTS, (1, 2, 3, 4)
# "A few pixels" on a 64 px frame; the family samples with 85 % of the noise shared (sampling.json),
# where the benchmark's 20 'still' clips wander a median 2.4 px and 3 of them jump (NOTES.md)
STILL_PX = 4.0
shipped = pytest.mark.skipif(not (LORAS / "right.safetensors").exists(),
                             reason="the shapes motion LoRAs are not shipped in this checkout")
# the trained family, as a user gets it (tests/conftest.py picks the twin); `session` is on it too
pytestmark = pytest.mark.usefixtures("shapes_family")


def render(session, prompt, seed, **kw):
    return session.render(prompt=prompt, frames=16, seed=seed, steps=4, **kw)


@shipped
def test_the_files_are_peft_motion_loras_of_the_motion_modules():
    """peft's layout (AnimateDiff's holds only attention; these change the feed-forward and proj_out too),
    every layer inside a motion module, rank 16 at most, small enough to ship."""
    import re

    from safetensors.torch import load_file

    leaf = re.compile(r"^unet\.(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+\.(proj_out|"
                      r"transformer_blocks\.0\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
                      r"\.lora_[AB]\.weight$")
    for d in DIRECTIONS:
        path = LORAS / f"{d}.safetensors"
        assert path.stat().st_size < 1_000_000
        sd = load_file(path)
        assert "unet.down_blocks.0.motion_modules.0.transformer_blocks.0.ff.net.2.lora_A.weight" in sd
        for k, v in sd.items():
            assert leaf.match(k), k
            assert v.ndim == 2 and min(v.shape) in range(4, 17)


@pytest.fixture(scope="module")
def reads(session):
    """direction -> [(prompt, analyser reads)] of clips over 5 prompts x 4 seeds with `embedded:<direction>`
    (4 LCM steps, the family's shared noise, as a user renders them); None -> the same clips without."""
    from lcmvideo.shapes import analyse

    out = {}
    for d in (None, *DIRECTIONS):
        loras = [f"embedded:{d}"] if d else []
        out[d] = [(p, analyse.read_clip(render(session, p, s, motion_loras=loras))) for p in PROMPTS for s in SEEDS]
    return out


@pytest.fixture(scope="module")
def tracks(reads):
    """direction (or None) -> fitted (dx, dy) px/frame per clip."""
    return {d: [quality.velocity(r) for _, r in clips] for d, clips in reads.items()}


@shipped
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_each_motion_lora_moves_the_shape_its_way(tracks, direction):
    """>= 90 % of clips (prompts x seeds) go the LoRA's way, more than the same clips without it."""
    hits = [quality.goes_the_right_way(v, f"moving {direction}") for v in tracks[direction]]
    plain = [quality.goes_the_right_way(v, f"moving {direction}") for v in tracks[None]]
    assert np.mean(hits) >= 0.9 and np.mean(hits) > np.mean(plain), (hits, tracks[direction])


@shipped
def test_the_lora_is_what_moves_the_shape(tracks):
    """Each LoRA moves the same clips along its way faster (> 0.5 px/frame more) than they go without it:
    the direction comes from the LoRA."""
    for d in DIRECTIONS:
        dx, dy = world.MOTIONS[f"moving {d}"]
        along = [v[0] * dx + v[1] * dy for v in tracks[d] if v is not None]
        before = [v[0] * dx + v[1] * dy for v in tracks[None] if v is not None]
        assert np.mean(along) > np.mean(before) + 0.5, (d, along, before)


def test_a_still_prompt_without_a_lora_stays_within_a_few_pixels(session):
    """The shape of a 'still' clip stays within 4 px of its first place (the median; 80 % of clips within
    5 px), without any LoRA: a motion LoRA's movement is not the family's own drift."""
    wander = np.array([quality.wander(render(session, f"{p}, still", s)) for p in PROMPTS for s in SEEDS])
    assert np.median(wander) <= STILL_PX and np.mean(wander <= STILL_PX + 1) >= 0.8, wander


@shipped
def test_the_loader_applies_them_as_animatediff_does(session):
    """lcmvideo's loader (diffusers' LoRA loader after conversion) against AnimateDiff's own rule,
    W += weight * up @ down, applied by hand to the same model: the same frames."""
    lora = render(session, "a red circle", 5, motion_loras=["embedded:up:0.7"])
    models = session.models(session.settings(prompt="x"))
    with quality.motion_lora(models, LORAS / "up.safetensors", 0.7):
        by_hand = render(session, "a red circle", 5)
    assert np.abs(lora.astype(int) - by_hand).max() <= 2


@shipped
def test_cli_motion_lora_reaches_the_clip(tmp_path):
    """`lcmvideo render --motion-lora embedded:left` / `embedded:right`: from the same seed, each LoRA
    changes the clip, and the two differ (their direction is tested above)."""
    from click.testing import CliRunner

    from lcmvideo.cli import cli
    from lcmvideo.output import video

    clips = {}
    for d in (None, "left", "right"):
        out = tmp_path / f"{d}.mp4"
        args = ["-q", "render", "-p", "a white square on a black background", "--seed", "7", "--steps", "4",
                "--frames", "16", "-o", str(out)] + (["--motion-lora", f"embedded:{d}"] if d else [])
        r = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        clips[d], _ = video.read(out)
    diff = {d: quality.pixel_distance(clips[d], clips[None]) for d in ("left", "right")}
    assert min(diff.values()) > 0.002 and quality.pixel_distance(clips["left"], clips["right"]) > 0.002, diff
