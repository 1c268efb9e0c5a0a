"""Text conditioning: prompt text -> CLIP embeddings, per frame for prompt travel.

Prompts carry A1111-style term weights and may run past 75 tokens:

`(word:1.3)` multiplies the word's token embeddings by 1.3, `(word)` by 1.1, `[word]` by
1/1.1, nested brackets multiply; `\\(` is a literal bracket. As in A1111, the weighted
embeddings are rescaled to the unweighted mean so weights shift emphasis, not loudness.
Longer prompts are encoded in 75-token chunks and concatenated along the sequence.
`conditioning` turns a schedule's keyframes into one embedding per frame, blending between them.
"""

from __future__ import annotations

import re

from ..schedule import FrameRow, Settings, full_prompt, negative_for

TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")


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


def tokens_with_weights(tokenizer, text: str) -> tuple[list[int], list[float]]:
    ids, weights = [], []
    for part, w in parse_weights(text):
        part_ids = tokenizer(part, add_special_tokens=False).input_ids
        ids += part_ids
        weights += [w] * len(part_ids)
    return ids, weights


def encode(text_encoder, tokenizer, text: str, chunks: int | None = None):
    """(1, 77 * n_chunks, D) embeddings of one prompt; `chunks` pads to that many chunks."""
    import torch

    ids, weights = tokens_with_weights(tokenizer, text)
    size = tokenizer.model_max_length - 2
    n = max(1, -(-len(ids) // size))
    if chunks is not None:
        n = max(n, chunks)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = text_encoder.device
    out = []
    for c in range(n):
        cid, cw = ids[c * size:(c + 1) * size], weights[c * size:(c + 1) * size]
        row = [bos] + cid + [eos] + [pad] * (size - len(cid))
        wrow = [1.0] + cw + [1.0] * (size + 1 - len(cw))
        z = text_encoder(torch.tensor([row], device=device))[0]
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


def n_chunks(tokenizer, text: str) -> int:
    ids, _ = tokens_with_weights(tokenizer, text)
    return max(1, -(-len(ids) // (tokenizer.model_max_length - 2)))


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
    chunks = max(n_chunks(pipe.tokenizer, t) for t in texts + negs)
    known = {} if cache is None else cache.setdefault("text", {})  # (text, chunks) -> embedding, kept by a Session
    embeds = {}
    for t in dict.fromkeys(texts + negs):
        if (t, chunks) not in known:
            known[(t, chunks)] = encode(pipe.text_encoder, pipe.tokenizer, t, chunks)[0]
        embeds[t] = known[(t, chunks)]

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
