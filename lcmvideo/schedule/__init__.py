"""Schedules: settings, parsing with line numbers, validation, importers and the per-frame plan.

Pure Python (PyYAML, no torch): `lcmvideo plan` and `lcmvideo --help` load no model library.
"""

from .parse import Where
from .read import dumps, from_source, from_text, load
from .settings import (
                   ANNOTATED,
                   FITS,
                   FREE_INIT_FILTERS,
                   INIT_STRENGTH,
                   INPUT,
                   MODEL_KEYS,
                   SAMPLERS,
                   SIDECAR_MARK,
                   SOFT_MODEL_KEYS,
                   SOURCE_KEYS,
                   TRAVEL,
                   Context,
                   ControlSpec,
                   FrameRow,
                   FreeInit,
                   IpAdapterSpec,
                   Keyframe,
                   LcmMap,
                   LoraRef,
                   ModelPaths,
                   Settings,
                   init_strength_of,
                   uses_sparsectrl,
)
from .timeline import finish, full_prompt, image_blend, negative_for, plan, require_prompt, resolve_frame, travels_lora, windows
from .validate import apply_overrides, from_dict, parse_free_init, parse_ip_image, parse_lcm_map, parse_lora

__all__ = [
    "ANNOTATED", "FITS", "FREE_INIT_FILTERS", "INIT_STRENGTH", "INPUT", "MODEL_KEYS", "SAMPLERS", "SIDECAR_MARK",
    "SOFT_MODEL_KEYS",
    "SOURCE_KEYS", "TRAVEL", "Context", "ControlSpec", "FrameRow", "FreeInit", "IpAdapterSpec", "Keyframe", "LcmMap",
    "LoraRef", "ModelPaths", "Settings", "Where", "apply_overrides", "dumps", "finish", "from_dict", "from_source",
    "from_text", "full_prompt", "image_blend", "init_strength_of", "load", "negative_for", "parse_free_init", "parse_ip_image",
    "parse_lora", "parse_lcm_map", "plan", "require_prompt", "resolve_frame", "travels_lora", "uses_sparsectrl",
    "windows",
]
