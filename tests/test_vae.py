"""A separate VAE and TAESD: every layout users download loads to the same weights, they decode through
render, restyle and live, and an SDXL VAE is refused before anything is written."""

import json

import layouts
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import render_settings

from lcmvideo import models
from lcmvideo.cli import cli
from lcmvideo.models import loader
from lcmvideo.pipeline import text2video
from lcmvideo.schedule import ModelPaths


def weights(module) -> dict:
    return {k: v.detach().float() for k, v in module.state_dict().items()}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def vae_files(tiny_dir, tmp_path_factory):
    """The tiny family's VAE written as the original single file, in every shape it comes in."""
    d = tmp_path_factory.mktemp("vae")
    return {
        "safetensors": layouts.write_vae_single_file(tiny_dir / "vae", d / "vae-ft-mse-tiny.safetensors"),
        "ckpt state_dict": layouts.write_vae_single_file(tiny_dir / "vae", d / "vae-ft-mse-tiny.ckpt"),
        "ckpt flat": layouts.write_vae_single_file(tiny_dir / "vae", d / "flat.ckpt", wrap=False),
        "first_stage_model.": layouts.write_vae_single_file(tiny_dir / "vae", d / "prefixed.safetensors",
                                                            prefix="first_stage_model."),
    }


def load_vae(path):
    spec = models.resolve(ModelPaths(vae=str(path)))
    return spec.vae, loader._load_vae(spec.vae, torch.float32, "cpu")


@pytest.mark.parametrize("layout", ["safetensors", "ckpt state_dict", "ckpt flat", "first_stage_model."])
def test_original_vae_file_loads_to_the_folders_weights(tiny_dir, vae_files, layout):
    """The file (checked against diffusers' own single-file reader) loads to the diffusers folder's weights."""
    from diffusers import AutoencoderKL

    folder = weights(AutoencoderKL.from_pretrained(tiny_dir / "vae", local_files_only=True))
    path = vae_files[layout]
    if layout != "first_stage_model.":  # diffusers reads prefixed VAE keys only inside a whole checkpoint
        theirs = AutoencoderKL.from_single_file(str(path), config=str(tiny_dir), subfolder="vae", local_files_only=True)
        assert equal(weights(theirs), folder)
    ref, ours = load_vae(path)
    assert (ref.sniffed.kind, ref.sniffed.layout, ref.sniffed.family) == ("vae", "ldm", "SD1.5")
    assert equal(weights(ours), folder)


@pytest.fixture(scope="module")
def other_vae(tiny_dir, tmp_path_factory):
    """Another VAE for the tiny family (its decoder's last layer changed), as an original single file."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_dir / "vae", local_files_only=True)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(-1.0)
    return layouts.write_vae_single_file(vae, tmp_path_factory.mktemp("other") / "other_vae.safetensors")


def test_a_named_vae_decodes_and_a_session_swaps_it_without_rereading_the_base(other_vae, monkeypatch, tmp_path):
    import lcmvideo

    reads = []
    real = loader._load_base
    monkeypatch.setattr(loader, "_load_base", lambda ref, *a, **k: (reads.append(ref.path), real(ref, *a, **k))[1])
    session = lcmvideo.Session()
    kw = dict(prompt="a red circle", frames=2, steps=1, seed=3)
    own = session.render(**kw)
    other = session.render(**kw, vae=str(other_vae))
    back = session.render(**kw)
    assert len(reads) == 1 and session.loads == 3
    assert np.abs(own.astype(int) - other).max() > 20
    assert np.array_equal(own, back)  # the base's own VAE, read again alone from the base
    out = session.render_to_file(None, tmp_path / "v.mp4", **kw, vae=str(other_vae))
    side = json.loads((tmp_path / "v.mp4.json").read_text())
    assert side["models"]["vae"]["path"] == str(other_vae) and side["models"]["vae"]["decoder"] == "AutoencoderKL"
    assert side["settings"]["models"]["vae"] == str(other_vae.resolve()) and out.exists()
    side = json.loads(session.render_to_file(None, tmp_path / "w.mp4", **kw).with_suffix(".mp4.json").read_text())
    assert side["models"]["vae"] == {"path": None, "source": "the base model's own", "decoder": "AutoencoderKL"}


def _sdxl_vae_folder(tiny_dir, d):
    """The tiny VAE with SDXL's config value (scaling_factor 0.13025: the one thing besides the weights
    that tells an SDXL VAE folder from SD1.5's)."""
    import shutil

    shutil.copytree(tiny_dir / "vae", d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "scaling_factor": 0.13025, "force_upcast": True}))
    return d


@pytest.mark.parametrize("kind", ["folder", "named file", "16 latent channels"])
def test_an_sdxl_vae_is_refused_with_no_output(tiny_dir, vae_files, tmp_path, kind):
    from diffusers import AutoencoderKL

    if kind == "folder":
        vae, what = _sdxl_vae_folder(tiny_dir, tmp_path / "vae"), "a SDXL VAE (its config's scaling_factor"
    elif kind == "named file":
        vae, what = tmp_path / "sdxl_vae.safetensors", "a SDXL VAE (its name says SDXL)"
        vae.write_bytes(vae_files["safetensors"].read_bytes())
    else:
        torch.manual_seed(0)
        wide = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=8)
        vae, what = layouts.write_vae_single_file(wide, tmp_path / "ae.safetensors"), "a SD3/Flux (16 latent channels) VAE"
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(cli, ["render", "-p", "x", "--frames", "2", "--steps", "1", "--vae", str(vae), "-o", str(out)])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"lcmvideo: error: --vae: {vae} is {what}") and "Stable Diffusion 1.5" in line, line
    assert not out.exists() and "Traceback" not in r.output


def test_a_base_model_given_as_vae_is_refused(tiny_dir):
    from lcmvideo.errors import LcmvideoError

    with pytest.raises(LcmvideoError, match="is a base model .* not a vae model; pass it with --model"):
        models.resolve(ModelPaths(vae=str(tiny_dir)), {"vae": "flag"})


# ---------------------------------------------------------------- TAESD


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    """A small TAESD: the diffusers folder, madebyollin's file pair in an A1111-style VAE-approx folder,
    the pair as .safetensors, and a decoder alone."""
    d = tmp_path_factory.mktemp("taesd")
    model = layouts.tiny_taesd(seed=1)
    model.save_pretrained(d / "taesd-diffusers")
    layouts.write_taesd(model, d / "webui" / "models" / "VAE-approx")
    layouts.write_taesd(model, d / "pair_st", ext=".safetensors")
    return {"model": model.eval(), "folder": d / "taesd-diffusers", "models_dir": d / "webui",
            "pair": d / "webui" / "models" / "VAE-approx" / "taesd_decoder.pth",
            "pair_st": d / "pair_st" / "taesd_decoder.safetensors",
            "decoder only": layouts.write_taesd(model, d / "alone", encoder=False)}


@pytest.mark.parametrize("layout", ["pair", "pair_st", "folder"])
def test_taesd_files_load_to_the_models_weights(taesd, layout):
    from diffusers import AutoencoderTiny

    ref, vae = load_vae(taesd[layout])
    assert isinstance(vae, AutoencoderTiny) and ref.sniffed.detail["decoder"] == "taesd"
    assert equal(weights(vae), weights(taesd["model"]))


def test_taesd_by_name_in_models_dir_and_its_encoder_found_beside_the_decoder(taesd):
    spec = models.resolve(ModelPaths(vae="taesd", models_dir=str(taesd["models_dir"])))
    assert spec.vae.path == taesd["pair"]
    assert spec.vae.sniffed.detail["encoder_file"] == taesd["pair"].with_name("taesd_encoder.pth")


def _capture_decoder(monkeypatch, module):
    """Record which VAE decodes each clip, and the latents it decodes."""
    seen = []
    real = module.decode
    monkeypatch.setattr(module, "decode", lambda vae, latents, *a, **k: (seen.append((vae, latents)),
                                                                        real(vae, latents, *a, **k))[1])
    return seen


def test_taesd_decodes_a_render(taesd, monkeypatch):
    """The frames are TAESD's decoding of the clip's latents (diffusers' AutoencoderTiny on them)."""
    from diffusers import AutoencoderTiny

    loaded = models.load(models.resolve(ModelPaths(vae=str(taesd["pair"]))))
    seen = _capture_decoder(monkeypatch, text2video)
    frames = text2video.render(loaded, render_settings(frames=4, steps=2))
    (vae, latents), = seen
    assert isinstance(vae, AutoencoderTiny) and frames.shape == (4, 64, 64, 3)
    theirs = AutoencoderTiny.from_pretrained(taesd["folder"], local_files_only=True)
    with torch.inference_mode():
        flat = latents[0].permute(1, 0, 2, 3)
        expect = ((theirs.decode(flat).sample / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(frames.astype(int) - expect).max() <= 1


def _count_calls(monkeypatch):
    from diffusers import AutoencoderKL, AutoencoderTiny

    calls = {}
    for cls in (AutoencoderKL, AutoencoderTiny):
        for name in ("encode", "decode"):
            real = getattr(cls, name)

            def counted(self, *a, _real=real, _key=(cls.__name__, name), **k):
                calls[_key] = calls.get(_key, 0) + 1
                return _real(self, *a, **k)

            monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.mark.parametrize("mode", ["frames", "animatediff"])
def test_taesd_encodes_and_decodes_a_restyle(taesd, tmp_path, monkeypatch, mode):
    import lcmvideo
    from lcmvideo.output import video
    from lcmvideo.pipeline import restyle
    from lcmvideo.shapes import world

    src = world.clip(world.Scene("circle", "red", "black", 16, 32, 9, "moving right", 2.0), 4)
    video.write(src, tmp_path / "src", 8.0, "png")
    calls = _count_calls(monkeypatch)
    out, _, _ = lcmvideo.Session(vae=str(taesd["pair"])).restyle(
        tmp_path / "src", prompt="a blue circle", strength=0.5, steps=2, seed=1, output=tmp_path / "o.mp4",
        options=restyle.Options(report=False, mode=mode))
    assert out.shape == (4, 64, 64, 3)
    assert calls.get(("AutoencoderTiny", "encode")) and calls.get(("AutoencoderTiny", "decode"))
    assert not any(k[0] == "AutoencoderKL" for k in calls), calls


def test_taesd_decodes_live_and_the_stream_batch(taesd, monkeypatch, tmp_path):
    from lcmvideo import Session, live
    from lcmvideo.pipeline import img2img

    calls = _count_calls(monkeypatch)
    session = Session(vae=str(taesd["pair"]))
    summary = session.live(live.Synthetic(fps=30, size=64), prompts=["a red circle"], steps=1, max_frames=2,
                           out=tmp_path / "r.mp4", fps=8)
    assert summary.frames_out == 2
    batch = img2img.StreamBatch(img2img.Stylizer(session._models, steps=2))
    frame = np.zeros((64, 64, 3), np.uint8)
    done = [batch.push(frame, "a red circle", 0.5).done for _ in range(3)]
    assert sum(len(d) for d in done) == 2
    assert calls.get(("AutoencoderTiny", "encode")) and calls.get(("AutoencoderTiny", "decode"))
    assert not any(k[0] == "AutoencoderKL" for k in calls), calls


def test_taesd_decoder_alone_renders_but_restyle_says_what_is_missing(taesd, tmp_path):
    from lcmvideo.output import video

    out = tmp_path / "r.mp4"
    args = ["--vae", str(taesd["decoder only"]), "--steps", "1", "--seed", "1"]
    r = CliRunner().invoke(cli, ["-q", "render", "-p", "x", "--frames", "2", "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".mp4.json").read_text())
    assert side["models"]["vae"]["decoder"] == "TAESD"
    video.write(np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "src", 8.0, "png")
    r = CliRunner().invoke(cli, ["-q", "restyle", str(tmp_path / "src"), "-p", "x", "-o", str(tmp_path / "s.mp4"),
                                 *args])
    assert r.exit_code == 2 and "taesd_encoder.pth" in r.output.strip().splitlines()[-1], r.output
    assert not (tmp_path / "s.mp4").exists() and not (tmp_path / "s.mp4.work").exists()


def test_loading_a_vae_or_taesd_initialises_nothing_at_random(vae_files, taesd, real_inits):
    for path in (vae_files["ckpt state_dict"], taesd["pair"], taesd["folder"]):
        real_inits.clear()
        models.load(models.resolve(ModelPaths(vae=str(path))))
        assert not real_inits, (path, real_inits[:5])
