"""Models, offline, from every layout users have: sniff a file's header, resolve what the user
named (path, HF cache id, A1111/ComfyUI folder name, or the embedded family), load it into one
pipeline. Importing this package loads neither torch nor diffusers; `load` does.
"""

from .hashes import describe, sha256_prefix
from .identify import Sniffed, classify, sniff
from .loader import Embedding, Models, file_stamp, load, make_scheduler, read_embedding, retune, torch_dtype
from .locate import (
                      MODEL_FOLDERS,
                      ModelRef,
                      ModelSpec,
                      discover,
                      hf_cache_snapshot,
                      pick_device,
                      resolve,
                      resolve_controlnet,
                      resolve_ip_adapter,
)
from .weights import WEIGHT_EXTS, load_state_dict, safetensors_shapes

__all__ = [
    "MODEL_FOLDERS", "WEIGHT_EXTS", "Embedding", "ModelRef", "ModelSpec", "Models", "Sniffed", "classify",
    "describe", "discover", "file_stamp", "hf_cache_snapshot", "load", "load_state_dict", "make_scheduler",
    "pick_device", "read_embedding", "resolve", "resolve_controlnet", "resolve_ip_adapter", "retune", "safetensors_shapes",
    "sha256_prefix", "sniff", "torch_dtype",
]
