"""Feed-forward layers run over bounded slices of their rows.

A transformer block's feed-forward widens each token 8x (GEGLU: 4x inner, doubled for the gate).
At 512² and 16 frames the first level's 65 536 tokens make that a 670 MB tensor and a 335 MB one
beside it, the largest transients of a render. Each token is transformed alone, so running the
rows in slices gives the same values with the intermediate bounded.
"""

from __future__ import annotations

import types

BUDGET = 64 * 2**20  # bytes of a slice's widest intermediate
MIN_ROWS = 1024  # below this the matmuls lose more to overhead than the memory is worth


def _sliced():
    def forward(self, hidden_states, *args, **kwargs):
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        if len(flat) <= self._rows:
            return self._whole(hidden_states)
        out = None
        for i in range(0, len(flat), self._rows):
            part = self._whole(flat[i:i + self._rows])
            if out is None:  # filled in place: torch.cat would hold every slice and the result at once
                out = part.new_empty((len(flat), part.shape[-1]))
            out[i:i + len(part)] = part
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])
    return forward


def bound_feed_forward(model, budget: int = BUDGET, min_rows: int = MIN_ROWS) -> int:
    """Make every diffusers FeedForward in `model` run in row slices whose widest intermediate is
    at most `budget` bytes. Returns how many it changed; calling it again changes nothing."""
    from diffusers.models.attention import FeedForward

    n = 0
    for m in model.modules():
        if not isinstance(m, FeedForward) or hasattr(m, "_whole"):
            continue
        first = m.net[0]
        proj = getattr(first, "proj", first)
        width = getattr(proj, "out_features", None)
        if width is None:
            continue
        elt = proj.weight.element_size()
        m._rows = max(min_rows, budget // (width * elt))
        m._whole = m.forward
        m.forward = types.MethodType(_sliced(), m)
        n += 1
    return n
