"""Loading and memory: no random initialisation, one copy of every weight, reuse without doubling,
work that cannot fit refused up front, and out-of-memory named in one line."""

import gc
import json
import subprocess
import sys

import layouts
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lcmvideo import models
from lcmvideo.cli import cli
from lcmvideo.schedule import ModelPaths


@pytest.fixture(scope="module")
def single_files(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    return {"base": layouts.write_ldm_single_file(tiny_dir, d / "base.safetensors"),
            "motion": layouts.write_animatediff_original(tiny_dir / "motion_adapter", d / "mm_v2.ckpt"),
            "lora": layouts.write_kohya_lora(tiny_dir / "lcm_lora", d / "lcm_kohya.safetensors")}


@pytest.mark.parametrize("layout", ["diffusers", "single files"])
def test_loading_initialises_nothing_at_random(tiny_dir, single_files, real_inits, layout):
    paths = ModelPaths() if layout == "diffusers" else ModelPaths(
        base=str(single_files["base"]), motion=str(single_files["motion"]), lcm_lora=str(single_files["lora"]))
    real_inits.clear()
    loaded = models.load(models.resolve(paths))
    assert not real_inits, f"random initialisation of real tensors while loading: {real_inits[:5]}"
    assert all(p.device.type == "cpu" for p in loaded.pipe.unet.parameters())


def test_the_spy_sees_random_init(real_inits):
    torch.nn.Linear(4, 4)
    assert real_inits


LIVE = r'''
import gc, json, torch
from lcmvideo import Session
session = Session()
session.render(prompt="a red circle", frames=4, steps=1, seed=1)
def storages(tensors):
    out = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out
pipe = session._models.pipe
model = storages([*(x for m in (pipe.unet, pipe.vae, pipe.text_encoder) for x in (*m.parameters(), *m.buffers()))])
live = storages(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
print(json.dumps({"model": sum(model.values()), "live": sum(live.values()),
                  "outside": sum(v for k, v in live.items() if k not in model)}))
'''


def test_a_one_shot_render_holds_one_copy_of_each_weight():
    """Every tensor alive after a render is the model's own; nothing else of any size (a cached
    original, a deep copy, a 2D UNet beside the motion UNet) is left."""
    r = subprocess.run([sys.executable, "-c", LIVE], capture_output=True, text=True, check=True)
    n = json.loads(r.stdout.strip().splitlines()[-1])
    assert n["outside"] < 0.05 * n["model"], n


def live_bytes() -> int:
    import warnings

    gc.collect()
    seen = {}
    with warnings.catch_warnings():  # isinstance() on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for o in objects:
        if isinstance(o, torch.Tensor) and o.device.type == "cpu":
            s = o.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def test_a_session_changes_a_lora_without_a_second_copy(monkeypatch):
    """A changed LoRA scale reloads without reading the base again and without a second copy of the
    weights (the LoRAs are unfused and fused again); going back gives the first frames again."""
    import lcmvideo
    from lcmvideo.models import loader

    reads = []
    real = loader._load_base
    monkeypatch.setattr(loader, "_load_base", lambda ref, *a: (reads.append(ref.path), real(ref, *a))[1])
    session = lcmvideo.Session()
    a = session.render(prompt="a red circle", frames=4, steps=2, seed=1)
    before = live_bytes()
    b = session.render(prompt="a red circle", frames=4, steps=2, seed=1, lcm_lora_scale=0.3)
    c = session.render(prompt="a red circle", frames=4, steps=2, seed=1)
    after = live_bytes()
    weights = sum(p.numel() * p.element_size() for p in session._models.pipe.unet.parameters())
    assert session.loads == 3 and len(reads) == 1
    assert np.abs(a.astype(int) - b).max() > 2  # the scale really changed
    assert np.abs(a.astype(int) - c).max() <= 1  # unfused and fused again: the same weights, to rounding
    assert after - before < 0.1 * weights, (before, after, weights)


def test_chunked_decode_equals_whole(tiny_models):
    from lcmvideo.pipeline import decode

    torch.manual_seed(0)
    latents = torch.randn(1, 4, 6, 8, 8)
    with torch.inference_mode():
        whole = decode.decode(tiny_models.pipe.vae, latents, chunk=6)
        single = decode.decode(tiny_models.pipe.vae, latents, chunk=1)
    assert whole.shape == (6, 64, 64, 3)
    assert np.abs(whole.astype(int) - single).max() <= 1


def test_feed_forward_in_row_slices_equals_whole(tiny_models):
    from diffusers.models.attention import FeedForward

    from lcmvideo.models.chunking import bound_feed_forward

    unet = tiny_models.pipe.unet
    ffs = [m for m in unet.modules() if isinstance(m, FeedForward)]
    assert ffs and all(hasattr(m, "_whole") for m in ffs)  # the loader bounded every one
    assert bound_feed_forward(unet) == 0  # and bounding twice changes nothing
    torch.manual_seed(0)
    x, ehs = torch.randn(1, 4, 6, 8, 8), torch.randn(6, 77, unet.config.cross_attention_dim)
    rows = [m._rows for m in ffs]
    calls = []
    try:
        with torch.inference_mode():
            whole = unet(x, torch.tensor(500), encoder_hidden_states=ehs).sample
            for m in ffs:
                m._rows = 7  # an odd slice, so the last one is short
                m.net[0].register_forward_hook(lambda mod, i, o: calls.append(len(i[0])))
            sliced = unet(x, torch.tensor(500), encoder_hidden_states=ehs).sample
    finally:
        for m, r in zip(ffs, rows):
            m._rows = r
            m.net[0]._forward_hooks.clear()
    assert calls and max(calls) <= 7  # the slices really ran
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


def test_decode_chunks_shrink_with_the_frame_size():
    from lcmvideo.pipeline.decode import CHUNK, chunk_for

    assert chunk_for(64, 64) == CHUNK and chunk_for(512, 512) == 1 and 1 < chunk_for(256, 256) < CHUNK


def test_impossible_work_is_refused_before_loading(tmp_path, monkeypatch):
    from lcmvideo.models import loader

    monkeypatch.setattr(loader, "load", lambda *a, **k: pytest.fail("models were loaded"))
    out = tmp_path / "big.mp4"
    r = CliRunner().invoke(cli, ["render", "-p", "x", "--width", "51200", "--height", "51200", "-o", str(out)])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("lcmvideo: error: --width/--height: 51200x51200 with 16 frames needs at least")
    assert "GiB in all" in line and "Traceback" not in r.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize("message", ["[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                                     "memory: you tried to allocate 4294967296 bytes.", "CUDA out of memory."])
def test_out_of_memory_during_work_is_one_line(tmp_path, monkeypatch, message):
    from lcmvideo.pipeline import text2video

    def oom(*a, **k):
        raise RuntimeError(message)

    monkeypatch.setattr(text2video, "denoise", oom)
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(cli, ["render", "-p", "x", "--frames", "4", "--steps", "1", "-o", str(out)])
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("lcmvideo: error: out of memory rendering 4 frames at 64x64 on cpu; try --dtype float16")
    assert "RuntimeError" not in r.output and not list(tmp_path.iterdir())


def weights(pipe) -> dict:
    return {k.replace(".base_layer.", "."): v.clone() for k, v in pipe.unet.state_dict().items() if ".lora_" not in k}


def test_fusing_equals_diffusers_and_unfusing_restores_the_base(tiny_dir):
    """lcmvideo adds the LoRA updates itself (a 3x3 conv LoRA's as one matmul); the fused weights equal
    diffusers' fuse_lora on the same adapters, and taking them out gives the base weights back."""
    from lcmvideo.models import loader

    ours = models.load(models.resolve(ModelPaths()))
    theirs = models.load(models.resolve(ModelPaths(fuse=False)))
    theirs.pipe.fuse_lora(adapter_names=["lcm"], lora_scale=1.0)
    base = weights(models.load(models.resolve(ModelPaths(lcm_lora="none"))).pipe)
    a, b = weights(ours.pipe), weights(theirs.pipe)
    assert a.keys() == b.keys() == base.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    convs = [k for k in a if a[k].ndim == 4 and a[k].shape[2:] == (3, 3) and not torch.equal(a[k], base[k])]
    assert convs, "the LoRA changes 3x3 convolutions"
    loader._drop_loras(ours.pipe, fused=True)
    back = weights(ours.pipe)
    assert max((back[k] - base[k]).abs().max().item() for k in base) < 1e-6
