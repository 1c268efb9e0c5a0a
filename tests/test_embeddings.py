"""Textual-inversion embeddings: A1111 and ComfyUI files and prompt syntax, named or found in an
A1111/ComfyUI folder, single- and multi-vector, never unpickled beyond plain tensors."""

import json

import layouts
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lcmvideo import models, schedule
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.models import loader
from lcmvideo.pipeline import text
from lcmvideo.schedule import ModelPaths

WIDTH = 64  # the tiny family's text encoder


def vectors(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """BadDream (1 vector, A1111 .pt) in an A1111 root's embeddings/, easynegative (3 vectors, A1111
    .safetensors) in ComfyUI's models/embeddings, negative_hand-neg (2 vectors, .pt) named alone."""
    d = tmp_path_factory.mktemp("ti")
    out = {"a1111": d / "webui", "comfy": d / "ComfyUI", "vectors": {}}
    for root, sub, name, ext, n, seed in [("a1111", "embeddings", "BadDream", ".pt", 1, 1),
                                          ("comfy", "models/embeddings", "easynegative", ".safetensors", 3, 2)]:
        folder = out[root] / sub
        folder.mkdir(parents=True)
        out[name] = layouts.write_a1111_embedding(vectors(n, seed), folder / f"{name}{ext}")
        out["vectors"][name] = vectors(n, seed)
    out["negative_hand-neg"] = layouts.write_a1111_embedding(vectors(2, 3), d / "negative_hand-neg.pt")
    out["vectors"]["negative_hand-neg"] = vectors(2, 3)
    return out


@pytest.fixture(scope="module")
def with_embeddings(files):
    return models.load(models.resolve(ModelPaths(models_dir=str(files["comfy"]),
                                                 embeddings=[str(files["negative_hand-neg"]), str(files["BadDream"])])))


def enc(m, prompt: str, chunks=None):
    with torch.inference_mode():
        return text.encode(m.pipe.text_encoder, m.pipe.tokenizer, prompt, chunks, **text.text_options(m))


def test_the_tokens_input_embedding_rows_are_the_files_vectors(with_embeddings, files):
    table = with_embeddings.embeddings
    assert sorted(table) == ["baddream", "easynegative", "negative_hand-neg"]
    emb = with_embeddings.pipe.text_encoder.get_input_embeddings()
    for name, v in files["vectors"].items():
        ids = table[name.lower()].ids
        assert len(ids) == len(v) and ids[0] >= 49408
        with torch.inference_mode():
            assert torch.equal(emb(torch.tensor([ids]))[0], v)
    # the vocabulary's own rows are the text encoder's, not a copy
    assert emb.weight.data_ptr() == with_embeddings.pipe.text_encoder.state_dict()[
        next(k for k in with_embeddings.pipe.text_encoder.state_dict() if k.endswith("token_embedding.weight"))
    ].data_ptr()


def test_only_prompts_that_name_an_embedding_change(with_embeddings, tiny_models):
    plain = "a red circle on a black background"
    assert torch.equal(enc(with_embeddings, plain), enc(tiny_models, plain))
    assert torch.equal(enc(with_embeddings, plain + ", BadDreams"), enc(tiny_models, plain + ", BadDreams"))  # a word
    named = enc(with_embeddings, plain + ", BadDream")
    assert not torch.allclose(named, enc(tiny_models, plain + ", BadDream"))


@pytest.mark.parametrize("written", ["baddream", "embedding:BadDream", "embedding:BadDream.pt", "(BadDream)1.0",
                                     "embedding:subfolder/BadDream.pt"])
def test_a1111_and_comfyui_syntax_name_the_same_embedding(with_embeddings, written):
    written = written.replace("(BadDream)1.0", "(BadDream:1.0)")
    plain = "a red circle, "
    assert torch.equal(enc(with_embeddings, plain + written), enc(with_embeddings, plain + "BadDream"))


def test_weighted_embeddings(with_embeddings):
    a = enc(with_embeddings, "a red circle, (embedding:easynegative:1.3)")
    assert torch.equal(a, enc(with_embeddings, "a red circle, (easynegative:1.3)"))
    assert not torch.allclose(a, enc(with_embeddings, "a red circle, easynegative"))
    ids, weights, spans = text.tokens_with_weights(with_embeddings.pipe.tokenizer, "(embedding:easynegative:1.3) x",
                                                   with_embeddings.embeddings)
    assert ids[:3] == with_embeddings.embeddings["easynegative"].ids and weights[:3] == [1.3] * 3
    assert spans == [(0, 3)]


def test_multi_vector_embeddings_stay_whole_in_one_chunk(with_embeddings):
    tok = with_embeddings.pipe.tokenizer
    prompt = " ".join(["a"] * 74) + " easynegative"
    assert text.n_chunks(tok, prompt, with_embeddings.embeddings) == 2
    ids, weights, spans = text.tokens_with_weights(tok, prompt, with_embeddings.embeddings)
    chunks = text._pack(ids, weights, spans, 75)
    assert [len(c) for c, _ in chunks] == [74, 3] and chunks[1][0] == with_embeddings.embeddings["easynegative"].ids
    assert enc(with_embeddings, prompt).shape[1] == 2 * 77
    assert text.n_chunks(tok, " ".join(["a"] * 72) + " easynegative", with_embeddings.embeddings) == 1


def test_travel_and_per_keyframe_negatives_use_them(with_embeddings, tmp_path):
    from lcmvideo import api
    from lcmvideo.pipeline import text2video

    s = schedule.from_text("frames: 4\nsteps: 1\nseed: 1\nguidance: 2\nkeyframes:\n  0: a red circle, BadDream\n"
                           "  3: {prompt: a blue circle, negative_prompt: 'embedding:easynegative'}\n")
    frames = text2video.render(with_embeddings, s)
    assert frames.shape == (4, 64, 64, 3)
    assert api.embeddings_used(s, with_embeddings.spec) == ["baddream", "easynegative"]
    s.guidance = 1.0
    s.resolved[1].params["guidance"] = 1.0
    assert api.embeddings_used(s, with_embeddings.spec) == ["baddream"]  # no CFG: the negative is not used


def test_a_missing_comfyui_embedding_is_a_usage_error_naming_the_folders(files, tmp_path):
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(cli, ["render", "-p", "a red circle, embedding:Nope", "--frames", "2", "--steps", "1",
                                 "--models-dir", str(files["a1111"]), "-o", str(out)])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("lcmvideo: error: embedding:Nope: no such embedding; looked in ")
    assert str(files["a1111"] / "embeddings") in line and "BadDream" in line
    assert not out.exists() and "Traceback" not in r.output
    with pytest.raises(LcmvideoError, match="embedding:Nope: no such embedding"):  # where no Session checked first
        enc(models.load(models.resolve(ModelPaths())), "embedding:Nope")


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this would create the file


def test_a_pickle_payload_in_an_embedding_never_runs(files, tmp_path, tiny_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": vectors(1, 9)}, "name": "evil", "payload": Payload(str(marker))}, evil)
    r = CliRunner().invoke(cli, ["render", "-p", "evil", "--frames", "2", "--embedding", str(evil),
                                 "-o", str(tmp_path / "o.mp4")])
    assert r.exit_code == 1 and "will not unpickle" in r.output, r.output
    folder = tmp_path / "root" / "embeddings"
    folder.mkdir(parents=True)
    (folder / "evil.pt").write_bytes(evil.read_bytes())
    spec = models.resolve(ModelPaths(models_dir=str(tmp_path / "root")))
    assert spec.embeddings == [] and "evil.pt: not used as an embedding" in spec.notes[0]
    assert not marker.exists()


def test_other_families_embeddings_are_refused(tmp_path):
    from safetensors.torch import save_file

    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(xl))
    with pytest.raises(LcmvideoError, match="is a SDXL embedding model"):
        models.resolve(ModelPaths(embeddings=[str(xl)]), {"embeddings": "flag"})
    wide = layouts.write_a1111_embedding(torch.zeros(1, 768), tmp_path / "sd15.pt")
    with pytest.raises(LcmvideoError, match="an embedding 768 wide; this base model's text encoder is 64 wide"):
        models.load(models.resolve(ModelPaths(embeddings=[str(wide)])))


def test_a_session_changes_embeddings_without_rereading_the_base_and_records_them(files, monkeypatch, tmp_path):
    import lcmvideo

    reads = []
    real = loader._load_base
    monkeypatch.setattr(loader, "_load_base", lambda ref, *a, **k: (reads.append(ref.path), real(ref, *a, **k))[1])
    session = lcmvideo.Session()
    kw = dict(prompt="a red circle, BadDream", frames=2, steps=1, seed=2)
    plain = session.render(**kw)
    named = session.render(**kw, embeddings=[str(files["BadDream"])])
    again = session.render(**kw)
    assert len(reads) == 1 and session.loads == 3
    assert np.abs(plain.astype(int) - named).max() > 2 and np.array_equal(plain, again)
    out = session.render_to_file(None, tmp_path / "e.mp4", **kw, embeddings=[str(files["BadDream"])])
    side = json.loads(out.with_suffix(".mp4.json").read_text())
    assert [e["name"] for e in side["models"]["embeddings"]] == ["BadDream"]
    assert side["settings"]["models"]["embeddings"] == [str(files["BadDream"].resolve())]


def test_plan_shows_which_embeddings_a_prompt_uses(files):
    from lcmvideo import app

    s = schedule.from_text(f"models: {{models_dir: '{files['comfy']}', embeddings: ['{files['BadDream']}']}}\n"
                           "negative_prompt: embedding:easynegative\nkeyframes:\n  0: a red circle, baddream\n"
                           "  8: a blue circle, embedding:Nope\n")
    t = app.plan_table(s, "t.yaml")
    assert [k["embeddings"] for k in t["keyframes"]] == [["BadDream"], []]
    assert [k["negative_embeddings"] for k in t["keyframes"]] == [["easynegative"]] * 2
    assert any("embedding:Nope" in w for w in t["warnings"])
