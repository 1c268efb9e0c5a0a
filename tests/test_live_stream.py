"""Stream batch (StreamDiffusion's denoising batch): frames at different steps in one UNet batch
come out as the sequential Stylizer makes them, one UNet call per frame, lagging steps - 1 frames."""

import numpy as np
import pytest

from lcmvideo import live
from lcmvideo.pipeline import img2img


def frames(n, size=64):
    src = live.Synthetic(fps=0, size=size)
    return [src.read() for _ in range(n)]


class CountingUnet:
    """Wraps a UNet and counts its calls and batch sizes."""

    def __init__(self, unet):
        self.unet, self.batches = unet, []

    def __call__(self, x, t, **kw):
        self.batches.append(x.shape[0])
        return self.unet(x, t, **kw)

    def __getattr__(self, name):
        return getattr(self.unet, name)


@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (3, 1.0), (4, 2.0)])
def test_stream_batch_matches_sequential(tiny_models, steps, guidance):
    seq = img2img.Stylizer(tiny_models, steps=steps, guidance=guidance, seed=3)
    stream = img2img.StreamBatch(img2img.Stylizer(tiny_models, steps=steps, guidance=guidance, seed=3))
    counter = CountingUnet(stream.sty.unet)
    stream.sty.unet = counter
    clip = frames(steps + 3)
    out = {}
    for i, f in enumerate(clip):
        r = stream.push(f, "a red circle", 0.6, tag=i)
        assert not r.discarded
        out.update({tag: fr for tag, fr in r.done})
        assert len(r.done) == (1 if i >= steps - 1 else 0)  # leaves steps - 1 calls after it entered
    while stream.pending():
        out.update({tag: fr for tag, fr in stream.advance("a red circle").done})
    assert sorted(out) == list(range(len(clip)))
    assert len(counter.batches) == len(clip) + steps - 1  # one UNet call per batch ...
    assert max(counter.batches) == steps * (2 if guidance > 1 else 1)  # ... holding every step at once
    for i, f in enumerate(clip):
        want = seq(f, "a red circle", 0.6)
        got = out[i]
        assert (got.latents.float() - want.latents.float()).abs().max().item() < 1e-3
        assert np.abs(got.image.astype(int) - want.image.astype(int)).max() <= 1


def test_stream_batch_discards_in_flight_on_a_settings_change(tiny_models):
    stream = img2img.StreamBatch(img2img.Stylizer(tiny_models, steps=3, seed=0))
    clip = frames(3)
    assert not stream.push(clip[0], "x", 0.5, tag=0).done
    assert not stream.push(clip[1], "x", 0.5, tag=1).done
    r = stream.push(clip[2], "x", 0.7, tag=2)
    assert r.discarded == [0, 1] and stream.pending() == 1
    stream.configure(seed=5)
    r = stream.push(clip[0], "x", 0.7, tag=3)
    assert r.discarded == [2] and stream.pending() == 1


def test_live_loop_runs_the_stream_batch_and_drains_it(tiny_models):
    """An unpaced source is read only when a frame is wanted: nothing is dropped, and the frames
    still in the batch when the source ends come out too (the loop runs the batch without input)."""
    stream = img2img.StreamBatch(img2img.Stylizer(tiny_models, steps=3, seed=0))
    s = live.run(stream, live.Synthetic(fps=0, size=64, frames=7),
                 live.Options(prompts=["a red circle"], window=False), say=lambda m: None)
    assert s.frames_in == 7 and s.frames_out == 7 and s.dropped == 0
    assert [q for q, _ in s.processed] == list(range(7))
    assert stream.pending() == 0


def test_stream_batch_changes_steps_between_frames(tiny_models):
    stream = img2img.StreamBatch(img2img.Stylizer(tiny_models, steps=2, seed=0))
    clip = frames(4)
    stream.push(clip[0], "x", 0.5, tag=0)
    live.tune(stream, 4, 0)
    assert stream.steps == 4
    r = stream.push(clip[1], "x", 0.5, tag=1)
    assert r.discarded == [0] and stream.run == 4


def test_stream_batch_refuses_tcd():
    from types import SimpleNamespace

    from diffusers import TCDScheduler

    with pytest.raises(Exception, match="--stream-batch: runs the LCM sampler's steps"):
        img2img.StreamBatch(SimpleNamespace(scheduler=TCDScheduler()))
