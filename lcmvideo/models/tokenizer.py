"""The CLIP ViT-L/14 tokenizer, built offline from the BPE merges shipped in the package.

The vocabulary is derived exactly as OpenAI CLIP's `SimpleTokenizer` derives it: the 256
byte symbols, the same with the end-of-word marker, one entry per merge, then the two
special tokens, 49408 in all. That is the vocabulary of every SD1.5 checkpoint.
"""

import gzip
import json
import os
from functools import cache
from pathlib import Path

from ..paths import DATA, cache_dir

MERGES_GZ = DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict:
    """CLIP's reversible byte -> printable unicode map (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer_files(out: Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json (HF CLIPTokenizer layout) into `out`."""
    lines = gzip.open(MERGES_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # as in CLIP: 48894 merges
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out


def tokenizer_dir() -> Path:
    """The tokenizer folder in the cache, written on first use."""
    d = cache_dir() / "clip-vit-large-patch14-tokenizer"
    if not (d / "tokenizer_config.json").exists():
        write_tokenizer_files(d)
    return d


@cache
def load_tokenizer():
    from transformers import CLIPTokenizer

    d = tokenizer_dir()
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=MAX_LENGTH,
                         pad_token="<|endoftext|>")
