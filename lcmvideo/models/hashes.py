"""What a sidecar records about the models: paths, layouts and content hashes (cached)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import LcmvideoError
from ..output.atomic import write_text
from ..paths import cache_dir
from . import embedded
from .locate import ModelSpec
from .weights import WEIGHT_EXTS


def sha256_prefix(path: Path, n: int = 12) -> str:
    """sha256 of a file, or of a folder's weight files in name order; cached by size+mtime."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_EXTS + (".json",)) \
        if path.is_dir() else [path]
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    db_path = cache_dir() / "hashes.json"
    try:
        db = json.loads(db_path.read_text())
    except (OSError, ValueError):
        db = {}
    if key not in db:
        h = hashlib.sha256()
        for p in files:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        db[key] = h.hexdigest()
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            write_text(db_path, json.dumps(db))
        except (OSError, LcmvideoError):
            pass  # a read-only cache only costs re-hashing
    return db[key][:n]


def describe(spec: ModelSpec, embeddings_used: list[str] | None = None) -> dict:
    """What the sidecar records about the models: enough to find the same files again; which VAE
    decoded; the embeddings the prompts used (lower-case names, text.embeddings_in)."""
    out = {}
    for ref in spec.refs():
        name = f"{ref.role}:{ref.given}" if ref.role in ("lora", "motion_lora") else ref.role
        if ref.sniffed is None:
            out[name] = {"path": None, "source": ref.source}
            continue
        out[name] = {"path": str(ref.path), "layout": ref.sniffed.layout, "family": ref.sniffed.family,
                     "sha256": sha256_prefix(ref.path), "source": ref.source}
        if ref.role in ("lora", "motion_lora"):
            out[name]["weight"] = ref.weight
        if ref.role == "vae":
            out[name]["decoder"] = "TAESD" if ref.sniffed.detail.get("decoder") == "taesd" else "AutoencoderKL"
    if spec.sparsectrl is not None:
        r = spec.sparsectrl
        out["sparsectrl"] = {"path": str(r.path), "layout": r.sniffed.layout, "family": r.sniffed.family,
                             "sha256": sha256_prefix(r.path), "source": r.source}
    if spec.vae is None:
        out["vae"] = {"path": None, "source": "the base model's own", "decoder": "AutoencoderKL"}
    used = set(embeddings_used or ())
    out["embeddings"] = [{"name": r.key, "path": str(r.path), "sha256": sha256_prefix(r.path), "source": r.source}
                         for r in spec.embeddings if r.key.lower() in used]
    out["clip_skip"], out["sampler"] = spec.clip_skip, spec.sampler
    if spec.sampler == "tcd":
        out["gamma"] = spec.gamma
    out["device"], out["dtype"], out["fused"] = spec.device, spec.dtype, spec.fuse
    if spec.embedded:
        out["embedded"] = embedded.version()
    return out
