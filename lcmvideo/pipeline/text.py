"""Text conditioning: prompt text -> CLIP embeddings, per frame for prompt travel.

Prompts carry A1111-style term weights and may run past 75 tokens:

`(word:1.3)` multiplies the word's token embeddings by 1.3, `(word)` by 1.1, `[word]` by
1/1.1, nested brackets multiply; `\\(` is a literal bracket. As in A1111, the weighted
embeddings are rescaled to the unweighted mean so weights shift emphasis, not loudness.
Longer prompts are encoded in 75-token chunks and concatenated along the sequence.
`conditioning` turns a schedule's keyframes into one embedding per frame, blending between them.

Textual-inversion embeddings are named as in A1111 (the file's stem as a word: `BadDream`, any
case) or as in ComfyUI (`embedding:BadDream`, with or without the extension; weighted like any term,
`(embedding:BadDream:1.2)`). Their vectors take one token position each and are never split
across two chunks (as A1111 does). A bare word that names no embedding stays a word; an
`embedding:NAME` that names none is an error. Clip skip follows A1111: 1 is the text encoder's
last layer, 2 the one before it through the final LayerNorm (diffusers' `clip_skip=1`), and so on.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import usage
from ..schedule import FrameRow, Settings, full_prompt, negative_for

TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
COMFY_EMBEDDING = re.compile(r"embedding:([^\s,]+)")  # ComfyUI's word: embedding:NAME[.pt], subfolders too
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """'a (red:1.3) [cat]' -> [('a ', 1.0), ('red', 1.3), (' ', 1.0), ('cat', 1/1.1)] (A1111's rules)."""
    out: list[list] = []
    round_open, square_open = [], []

    def multiply(start, factor):
        for i in range(start, len(out)):
            out[i][1] *= factor

    for m in TOKEN.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            out.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(out))
        elif tok == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif tok == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            out.append([tok, 1.0])
    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)
    merged: list[tuple[str, float]] = []
    for t, w in out:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + t, w)
        elif t:
            merged.append((t, w))
    return merged or [("", 1.0)]


def embedding_key(name: str) -> str:
    """How a prompt's name finds an embedding file: its stem, any case, the folder and the extension dropped."""
    name = name.rstrip(",").replace("\\", "/").rsplit("/", 1)[-1]
    if name.lower().endswith(WEIGHT_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    return name.lower()


@lru_cache(maxsize=64)
def _bare_names(names: frozenset):
    """A1111's rule as a pattern: an embedding's name as a whole word (letters, digits, _ around it end it)."""
    if not names:
        return None
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z_])(?:{alts})(?![0-9A-Za-z_])", re.IGNORECASE)


def split_embeddings(text: str, names) -> list[tuple[str, str | None, bool]]:
    """`text` cut into (text, None, False) runs and (word, key, explicit) embedding references:
    ComfyUI's `embedding:NAME` (explicit: key is None when nothing of that name is known) and A1111's
    bare names (only the known ones). `names`: the known lower-case keys."""
    names = frozenset(names)
    out = []

    def bare(run: str):
        rx = _bare_names(names)
        last = 0
        for m in rx.finditer(run) if rx else ():
            out.append((run[last:m.start()], None, False))
            out.append((m.group(0), m.group(0).lower(), False))
            last = m.end()
        out.append((run[last:], None, False))

    last = 0
    for m in COMFY_EMBEDDING.finditer(text):
        bare(text[last:m.start()])
        word = m.group(1)
        key = embedding_key(word)
        out.append((m.group(0), key if key in names else None, True))
        last = m.end()
    bare(text[last:])
    return [x for x in out if x[0]]


def embeddings_in(text: str, names) -> tuple[list[str], list[str]]:
    """(the known embeddings a prompt uses, the `embedding:NAME`s it names that are not known)."""
    used, missing = [], []
    for part, _ in parse_weights(text):
        for word, key, explicit in split_embeddings(part, names):
            if key is not None and key not in used:
                used.append(key)
            elif key is None and explicit:
                missing.append(word.split(":", 1)[1])
    return used, missing


def missing_embedding(word: str, searched=(), known=()) -> Exception:
    where = ", ".join(str(d) for d in searched) or "no embeddings folder (give --models-dir)"
    have = f"; known: {', '.join(sorted(known)[:10])}" if known else ""
    return usage(f"embedding:{word}: no such embedding; looked in {where} and the --embedding files{have}")


def tokens_with_weights(tokenizer, text: str, embeddings: dict | None = None, searched=()
                        ) -> tuple[list[int], list[float], list[tuple[int, int]]]:
    """(token ids, their weights, (start, length) of each embedding's ids). `embeddings`: lower-case
    name -> an object with `.ids` (models.Models.embeddings)."""
    ids, weights, spans = [], [], []
    names = embeddings or {}
    for part, w in parse_weights(text):
        runs = split_embeddings(part, names) if names or "embedding:" in part else [(part, None, False)]
        for run, key, explicit in runs:
            if key is not None:
                e = names[key]
                spans.append((len(ids), len(e.ids)))
                ids += list(e.ids)
                weights += [w] * len(e.ids)
                continue
            if explicit:
                raise missing_embedding(run.split(":", 1)[1], searched, [e.name for e in names.values()])
            part_ids = tokenizer(run, add_special_tokens=False).input_ids
            ids += part_ids
            weights += [w] * len(part_ids)
    return ids, weights, spans


def _pack(ids: list[int], weights: list[float], spans, size: int) -> list[tuple[list[int], list[float]]]:
    """Chunks of at most `size` tokens; an embedding's vectors go whole into the next chunk when they
    do not fit in this one (A1111's rule), unless they are longer than a chunk."""
    starts = dict(spans)
    chunks = [([], [])]
    i = 0
    while i < len(ids):
        n = starts.get(i, 1)
        cid, _ = chunks[-1]
        if cid and len(cid) + n > size and n <= size:
            chunks.append(([], []))
        for j in range(i, i + n):
            if len(chunks[-1][0]) == size:
                chunks.append(([], []))
            chunks[-1][0].append(ids[j])
            chunks[-1][1].append(weights[j])
        i += n
    return chunks


def _layers(text_encoder, ids, clip_skip: int):
    """The text encoder's output for `ids`: its last layer (clip_skip 1), or layer -clip_skip through
    the final LayerNorm, as diffusers' encode_prompt(clip_skip=clip_skip - 1) computes it."""
    if clip_skip <= 1:
        return text_encoder(ids)[0]
    layers = text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise usage(f"--clip-skip: {clip_skip} is more layers than the text encoder has ({layers})")
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    # transformers >= 5.6 flattened CLIPTextModel; before, the LayerNorm sat under text_model
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)


def text_options(models) -> dict:
    """What `encode` needs of a loaded model set besides the text encoder: clip skip and embeddings."""
    return dict(clip_skip=models.spec.clip_skip, embeddings=models.embeddings, searched=models.spec.embedding_dirs)


def encode(text_encoder, tokenizer, text: str, chunks: int | None = None, *, clip_skip: int = 1,
           embeddings: dict | None = None, searched=()):
    """(1, 77 * n_chunks, D) embeddings of one prompt; `chunks` pads to that many chunks."""
    import torch

    ids, weights, spans = tokens_with_weights(tokenizer, text, embeddings, searched)
    size = tokenizer.model_max_length - 2
    packed = _pack(ids, weights, spans, size)
    if chunks is not None:
        packed += [([], [])] * (chunks - len(packed))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = text_encoder.device
    out = []
    for cid, cw in packed:
        row = [bos] + cid + [eos] + [pad] * (size - len(cid))
        wrow = [1.0] + cw + [1.0] * (size + 1 - len(cw))
        z = _layers(text_encoder, torch.tensor([row], device=device), clip_skip)
        if any(w != 1.0 for w in cw):
            w = torch.tensor(wrow, device=device, dtype=z.dtype).view(1, -1, 1)
            before = z.float().mean()
            z = z * w
            after = z.float().mean()
            # A1111 restores the mean. Where the final LayerNorm leaves it ~0 (no learnt bias: the
            # tiny families), that ratio is noise over noise and can blow up to inf: keep z * w.
            scale = 1e-3 * z.float().abs().mean()
            if before.abs() > scale and after.abs() > scale:
                z = z * (before / after).to(z.dtype)
        out.append(z)
    return torch.cat(out, dim=1)


def n_chunks(tokenizer, text: str, embeddings: dict | None = None, searched=()) -> int:
    ids, weights, spans = tokens_with_weights(tokenizer, text, embeddings, searched)
    return len(_pack(ids, weights, spans, tokenizer.model_max_length - 2))


def slerp(a, b, t: float):
    """Spherical interpolation per token vector, norms interpolated linearly (Shoemake 1985)."""
    import torch

    if t <= 0:
        return a
    if t >= 1:
        return b
    af, bf = a.float(), b.float()
    na, nb = af.norm(dim=-1, keepdim=True), bf.norm(dim=-1, keepdim=True)
    ua, ub = af / na.clamp_min(1e-8), bf / nb.clamp_min(1e-8)
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) / so) * ua + (torch.sin(t * omega) / so) * ub
    near = dot > 0.9995  # nearly parallel: linear is exact enough and stable
    direction = torch.where(near, (1 - t) * ua + t * ub, direction)
    return (direction * ((1 - t) * na + t * nb)).to(a.dtype)


def conditioning(models, s: Settings, rows: list[FrameRow], cache: dict | None = None):
    """Per-frame text embeddings (T, L, D) for the prompt and, with CFG, the negative prompt.

    Each distinct keyframe text goes through the text encoder once; frames between keyframes
    blend the keyframes' embeddings (linear or slerp) with the plan's weights.
    """
    import torch

    pipe = models.pipe
    kfs = s.resolved
    use_cfg = any(r.params["guidance"] > 1.0 for r in rows)
    texts = [full_prompt(s, k) for k in kfs]
    negs = [negative_for(s, k) for k in kfs] if use_cfg else []
    opts = text_options(models)
    chunks = max(n_chunks(pipe.tokenizer, t, opts["embeddings"], opts["searched"]) for t in texts + negs)
    # (text, chunks, clip skip) -> embedding, kept by a Session (for one model set: one set of embeddings)
    known = {} if cache is None else cache.setdefault("text", {})
    embeds = {}
    for t in dict.fromkeys(texts + negs):
        if (t, chunks, opts["clip_skip"]) not in known:
            known[(t, chunks, opts["clip_skip"])] = encode(pipe.text_encoder, pipe.tokenizer, t, chunks, **opts)[0]
        embeds[t] = known[(t, chunks, opts["clip_skip"])]

    def per_frame(keyed):
        out = []
        for r in rows:
            if len(r.blend) == 1:
                out.append(embeds[keyed[r.blend[0][0]]])
                continue
            (i, wa), (j, wb) = r.blend
            a, b = embeds[keyed[i]], embeds[keyed[j]]
            out.append(slerp(a, b, wb) if s.interpolation == "slerp" else a * wa + b * wb)
        return torch.stack(out)

    cond = per_frame(texts)
    uncond = per_frame(negs) if use_cfg else None
    guidance = [max(r.params["guidance"], 1.0) for r in rows]
    return cond, uncond, guidance
