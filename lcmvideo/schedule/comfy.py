"""ComfyUI workflows (the UI format with nodes/links/widgets_values, or the API format with
class_type/inputs) to an lcmvideo schedule.

The sampler (KSampler, KSamplerAdvanced) is the root: its model input is followed up through LoRA
loaders and AnimateDiff-Evolved's loaders (motion model, context options, motion LoRAs) to the
checkpoint; its positive and negative inputs through ControlNet apply nodes to CLIPTextEncode,
FizzNodes' BatchPromptSchedule or ADE's Prompt Scheduling; its latent to an empty-latent node
(width, height, batch = frames). VAELoader, CLIPSetLastLayer and Video Combine are read wherever
they are. The UI format's positional widgets_values are named by each node type's inputs in the
order its source declares them (the UI adds a control_after_generate widget after a seed).
Nodes that change nothing lcmvideo can render are named in a note, never an error.
"""

from __future__ import annotations

from ..errors import usage
from . import fizz
from .importers import lcm_sampling

SEED = ("seed", "control_after_generate")
WIDGETS = {  # node type -> its widgets' names, in widgets_values' order
    "KSampler": [*SEED, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "CheckpointLoader": ["config_name", "ckpt_name"],
    "CheckpointLoaderSimpleWithNoiseSelect": ["ckpt_name", "beta_schedule", "use_custom_scale_factor",
                                              "scale_factor"],
    "VAELoader": ["vae_name"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "CLIPTextEncode": ["text"],
    "CLIPSetLastLayer": ["stop_at_clip_layer"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "ADE_EmptyLatentImageLarge": ["width", "height", "batch_size"],
    "ControlNetLoader": ["control_net_name"],
    "DiffControlNetLoader": ["control_net_name"],
    "ControlNetLoaderAdvanced": ["control_net_name"],
    "DiffControlNetLoaderAdvanced": ["control_net_name"],
    "ControlNetApply": ["strength"],
    "ControlNetApplyAdvanced": ["strength", "start_percent", "end_percent"],
    "ACN_AdvancedControlNetApply": ["strength", "start_percent", "end_percent"],
    "LoadImage": ["image", "upload"],
    "BatchPromptSchedule": ["text", "max_frames", "print_output", "start_frame", "end_frame"],
    "BatchPromptScheduleLatentInput": ["text", "print_output", "start_frame", "end_frame"],
    "ADE_PromptScheduling": ["prompts", "print_schedule", "max_length", "tensor_interp"],
    "ADE_AnimateDiffLoaderWithContext": ["model_name", "beta_schedule", "motion_scale", "apply_v2_models_properly"],
    "ADE_AnimateDiffLoaderGen1": ["model_name", "beta_schedule"],
    "ADE_AnimateDiffLoaderV1Advanced": ["model_name", "unlimited_area_hack", "context_length", "context_stride",
                                        "context_overlap", "context_schedule", "closed_loop", "beta_schedule"],
    "AnimateDiffLoaderV1": ["model_name", "unlimited_area_hack", "beta_schedule"],
    "ADE_LoadAnimateDiffModel": ["model_name"],
    "ADE_ApplyAnimateDiffModelSimple": [],
    "ADE_ApplyAnimateDiffModel": ["start_percent", "end_percent"],
    "ADE_UseEvolvedSampling": ["beta_schedule"],
    "ADE_AnimateDiffLoRALoader": ["name", "strength"],
    "ADE_AnimateDiffUniformContextOptions": ["context_length", "context_stride", "context_overlap",
                                             "context_schedule", "closed_loop", "fuse_method", "use_on_equal_length",
                                             "start_percent", "guarantee_steps"],
    "ADE_StandardUniformContextOptions": ["context_length", "context_stride", "context_overlap", "fuse_method",
                                          "use_on_equal_length", "start_percent", "guarantee_steps"],
    "ADE_LoopedUniformContextOptions": ["context_length", "context_stride", "context_overlap", "closed_loop",
                                        "fuse_method", "use_on_equal_length", "start_percent", "guarantee_steps"],
    "ADE_StandardStaticContextOptions": ["context_length", "context_overlap", "fuse_method", "use_on_equal_length",
                                         "start_percent", "guarantee_steps"],
    "VHS_VideoCombine": ["frame_rate", "loop_count", "filename_prefix", "format", "pingpong", "save_output"],
    "VHS_LoadVideo": ["video", "force_rate", "force_size", "custom_width", "custom_height", "frame_load_cap",
                      "skip_first_frames", "select_every_nth"],
    "VHS_LoadVideoPath": ["video", "force_rate", "force_size", "custom_width", "custom_height", "frame_load_cap",
                          "skip_first_frames", "select_every_nth"],
    "VHS_LoadImagesPath": ["directory", "image_load_cap", "skip_first_images", "select_every_nth"],
    "VHS_LoadImages": ["directory", "image_load_cap", "skip_first_images", "select_every_nth"],
    "PrimitiveNode": ["value", "control_after_generate"],
    "ModelSamplingDiscrete": ["sampling", "zsnr"],
    "ADE_MultivalDynamic": ["float_val"],
}
SAMPLERS = ("KSampler", "KSamplerAdvanced")
CHECKPOINTS = ("CheckpointLoaderSimple", "CheckpointLoader", "CheckpointLoaderSimpleWithNoiseSelect")
AD_LOADERS = ("ADE_AnimateDiffLoaderWithContext", "ADE_AnimateDiffLoaderGen1", "ADE_AnimateDiffLoaderV1Advanced",
              "AnimateDiffLoaderV1")
CONTEXTS = ("ADE_AnimateDiffUniformContextOptions", "ADE_StandardUniformContextOptions",
            "ADE_LoopedUniformContextOptions", "ADE_StandardStaticContextOptions")
CN_APPLY = ("ControlNetApply", "ControlNetApplyAdvanced", "ACN_AdvancedControlNetApply")
CN_LOADERS = ("ControlNetLoader", "DiffControlNetLoader", "ControlNetLoaderAdvanced", "DiffControlNetLoaderAdvanced")
LATENTS = ("EmptyLatentImage", "ADE_EmptyLatentImageLarge")
SCHEDULES = ("BatchPromptSchedule", "BatchPromptScheduleLatentInput")
# nodes that show, save or route and change nothing a schedule says
QUIET = {"VAEDecode", "VAEDecodeTiled", "PreviewImage", "SaveImage", "Note", "MarkdownNote", "Reroute",
         "PrimitiveNode", "VHS_VideoCombine", "VAELoader", "CLIPSetLastLayer", "ADE_ApplyAnimateDiffModelSimple",
         "ADE_UseEvolvedSampling", "ADE_LoadAnimateDiffModel", "ADE_ApplyAnimateDiffModel",
         "ADE_AnimateDiffLoRALoader", *WIDGETS}


class Link(tuple):
    """(source node id, output slot)."""


def is_workflow(data) -> bool:
    if not isinstance(data, dict):
        return False
    if isinstance(data.get("nodes"), list) and "links" in data:
        return True
    return bool(data) and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def _graph(data: dict, source: str) -> dict[str, dict]:
    """Both formats -> {id: {type, inputs: {name: value | Link}, mode}}."""
    if isinstance(data.get("nodes"), list):
        links = {}
        for ln in data.get("links") or []:
            if isinstance(ln, list) and len(ln) >= 5:
                links[ln[0]] = Link((str(ln[1]), ln[2]))
            elif isinstance(ln, dict) and "id" in ln:
                links[ln["id"]] = Link((str(ln.get("origin_id")), ln.get("origin_slot", 0)))
        nodes = {}
        for n in data["nodes"]:
            if not isinstance(n, dict) or "type" not in n or "id" not in n:
                raise usage(f"{source}: nodes: each node needs an id and a type, got {str(n)[:60]!r}")
            kind = str(n["type"])
            inputs: dict = {}
            w = n.get("widgets_values")
            if isinstance(w, dict):  # VideoHelperSuite's nodes store their widgets by name
                inputs.update({k: v for k, v in w.items() if not isinstance(v, dict)})
            elif isinstance(w, list):
                names = WIDGETS.get(kind)
                if kind == "BatchPromptSchedule" and len(w) > 3 and isinstance(w[3], str):
                    names = ["text", "max_frames", "print_output", "pre_text", "app_text"]  # before they became inputs
                names = names or [f"widget_{i}" for i in range(len(w))]
                inputs.update(dict(zip(names, w)))
            for inp in n.get("inputs") or []:
                if isinstance(inp, dict) and inp.get("link") is not None and inp.get("link") in links:
                    inputs[str(inp.get("name"))] = links[inp["link"]]
            nodes[str(n["id"])] = {"type": kind, "inputs": inputs, "mode": n.get("mode", 0)}
        return nodes
    nodes = {}
    for nid, n in data.items():
        ins = n.get("inputs") if isinstance(n.get("inputs"), dict) else {}
        nodes[str(nid)] = {"type": str(n["class_type"]), "mode": 0, "inputs": {
            k: Link((str(v[0]), v[1])) if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) else v
            for k, v in ins.items()}}
    return nodes


class _Reader:
    def __init__(self, nodes: dict, source: str):
        self.nodes, self.source = nodes, source
        self.used: set[str] = set()
        self.notes: list[str] = []

    def node(self, link) -> tuple[str, dict] | None:
        """The node a link comes from, through reroutes and bypassed nodes."""
        seen = set()
        while isinstance(link, Link) and link[0] in self.nodes and link[0] not in seen:
            seen.add(link[0])
            n = self.nodes[link[0]]
            if n["type"] == "Reroute" or n["mode"] == 4:
                self.used.add(link[0])
                nxt = next((v for v in n["inputs"].values() if isinstance(v, Link)), None)
                if nxt is None:
                    return None
                link = nxt
                continue
            if n["mode"] == 2:  # muted: ComfyUI does not run it
                return None
            return link[0], n
        return None

    def visit(self, link, seen: set) -> tuple[str, dict] | None:
        """The node `link` comes from, marked used; None at a dead end or a node in `seen` (a cycle)."""
        got = self.node(link)
        if got is None or got[0] in seen:
            return None
        seen.add(got[0])
        self.used.add(got[0])
        return got

    def value(self, n: dict, name: str, default=None, kinds=(int, float, str, bool)):
        """An input's value, through a PrimitiveNode or a one-value node when it is linked."""
        v = n["inputs"].get(name, default)
        if isinstance(v, Link):
            got = self.node(v)
            if got is None:
                return default
            self.used.add(got[0])
            ins = got[1]["inputs"]
            v = ins.get("value", next((x for x in ins.values() if not isinstance(x, Link)), default))
        return v if isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds) else default

    def number(self, n, name, lo, hi, where, kind=float):
        v = self.value(n, name, kinds=(int, float))
        if v is None:
            return None
        if not lo <= v <= hi or (kind is int and not float(v).is_integer()):
            raise usage(f"{self.source}: node {where} ({n['type']}): {name} must be from {lo} to {hi}, got {v!r}")
        return kind(v)


def from_workflow(data: dict, where) -> list[tuple[dict, list[str]]]:
    src = where.source
    if not is_workflow(data):
        raise usage(f"{src}: not a ComfyUI workflow (no nodes/links, and not the API format's class_type nodes)")
    r = _Reader(_graph(data, src), src)
    nodes = r.nodes
    samplers = sorted((nid for nid, n in nodes.items() if n["type"] in SAMPLERS and n["mode"] not in (2, 4)),
                      key=lambda i: (len(i), i))
    if not samplers:
        raise usage(f"{src}: no KSampler or KSamplerAdvanced node: nothing to render")
    sid = samplers[0]
    if len(samplers) > 1:
        r.notes.append(f"{src}: {len(samplers)} samplers; the first (node {sid}) is carried over")
    ks = nodes[sid]
    r.used.add(sid)
    out: dict = {}
    models: dict = {}
    seed = r.value(ks, "seed" if ks["type"] == "KSampler" else "noise_seed", kinds=(int,))
    if seed is not None:
        if not 0 <= seed <= 2**64 - 1:
            raise usage(f"{src}: node {sid} ({ks['type']}): seed must be from 0 to 2^64-1, got {seed}")
        out["seed"] = seed
    steps = r.number(ks, "steps", 1, 100, sid, int)
    if steps is not None:
        out["steps"] = steps
    cfg = r.number(ks, "cfg", 0, 30, sid)
    if cfg is not None:
        out["guidance"] = cfg
    sampler = r.value(ks, "sampler_name", kinds=(str,))
    if sampler == "lcm":
        models["sampler"] = "lcm"
    elif sampler is not None:
        r.notes.append(f"{src}: node {sid}: sampler {sampler!r} not carried over: lcmvideo samples the LCM-LoRA "
                       "with lcm or tcd (models.sampler)")
    denoise = r.value(ks, "denoise", kinds=(int, float))
    if denoise is not None and denoise < 1:
        r.notes.append(f"{src}: node {sid}: denoise {denoise:g} (img2img) not carried over; see lcmvideo restyle")

    _model_chain(r, ks.get("inputs", {}).get("model"), models, out)
    lcm_sampling(out, "lcm" in (sampler, models.get("sampler")) or "lcm_lora" in models, f"{src}: node {sid}",
                 r.notes)
    positive = _conditioning(r, ks["inputs"].get("positive"), out, positive=True)
    negative = _conditioning(r, ks["inputs"].get("negative"), out, positive=False)
    _latent(r, ks["inputs"].get("latent_image"), out)
    frames = out.get("frames", 16)
    if positive is None:
        raise usage(f"{src}: node {sid}: its positive input comes from no CLIPTextEncode, BatchPromptSchedule or "
                    "Prompt Scheduling node: no prompt")
    kind, value = positive
    if kind == "text":
        out["keyframes"] = {"0": value}
    elif kind == "fizz":
        text, max_frames, pre, app = value
        pairs = fizz.parse_pairs(text, f"{src}: BatchPromptSchedule")
        kfs, _ = fizz.schedule_keyframes(pairs, max_frames, pre, app, f"{src}: BatchPromptSchedule", r.notes)
        if "frames" not in out:
            frames = out["frames"] = max_frames
        dropped = [k for k in kfs if int(k) >= frames]
        for k in dropped:
            r.notes.append(f"{src}: BatchPromptSchedule keyframe {k} is beyond the latent batch ({frames} frames)")
            kfs.pop(k)
        out["keyframes"] = kfs or {"0": {"prompt": next(iter(pairs.values()))}}
        out["hold"], out["interpolation"] = 0.0, "linear"
    else:  # ADE prompt scheduling
        out["keyframes"] = value
    if negative is not None:
        nkind, nvalue = negative
        if nkind == "text":
            out["negative_prompt"] = nvalue
        elif not (nkind == "fizz_neg" and kind == "fizz"):  # a schedule's NEG output: its keyframes say it
            r.notes.append(f"{src}: the negative prompt's schedule is not carried over (its first prompt is used)")
            if nkind == "ade":
                first = next(iter(nvalue.values()), {})
                out["negative_prompt"] = first.get("prompt", "")
            else:
                text, max_frames, pre, app = nvalue
                pairs = fizz.parse_pairs(text, f"{src}: BatchPromptSchedule")
                out["negative_prompt"] = " ".join((pre, next(iter(pairs.values())), app)).strip()
    if kind == "fizz" and (negative is None or negative[0] != "fizz_neg"):
        for k in out["keyframes"].values():  # the NEG output not wired to the sampler: no per-frame negatives
            k.pop("negative_prompt", None)

    for nid, n in nodes.items():  # nodes read wherever they are
        if n["mode"] in (2, 4):
            continue
        t = n["type"]
        if t == "VAELoader" and "vae" not in models:
            v = r.value(n, "vae_name", kinds=(str,))
            if v:
                models["vae"] = v
            r.used.add(nid)
        elif t == "CLIPSetLastLayer":
            v = r.value(n, "stop_at_clip_layer", kinds=(int,))
            if v is not None and -12 <= v <= -1:
                models["clip_skip"] = -v
            r.used.add(nid)
        elif t == "VHS_VideoCombine":
            _video_combine(r, nid, n, out)
    if models:
        out["models"] = models
    unknown = sorted({f"{n['type']} (node {nid})" for nid, n in nodes.items()
                      if nid not in r.used and n["type"] not in QUIET and n["mode"] != 2})
    if unknown:
        r.notes.append(f"{src}: nodes not carried over: {', '.join(unknown)}")
    if models.get("base") or models.get("motion"):
        r.notes.append(f"{src}: model names are ComfyUI's (files in its models folders): give --models-dir "
                       "(ComfyUI's folder) to find them")
    return [(out, r.notes)]


def _model_chain(r: _Reader, link, models: dict, out: dict):
    src = r.source
    loras = []
    seen = set()
    while (got := r.visit(link, seen)) is not None:
        nid, n = got
        t = n["type"]
        if t in CHECKPOINTS:
            name = r.value(n, "ckpt_name", kinds=(str,))
            if name:
                models["base"] = name
            break
        if t in ("LoraLoader", "LoraLoaderModelOnly"):
            name = r.value(n, "lora_name", kinds=(str,))
            w = r.value(n, "strength_model", 1.0, kinds=(int, float))
            if name and "lcm" in name.lower():  # lcm-lora-sdv1-5.safetensors, LCM/pytorch_lora_weights...
                models["lcm_lora"] = name
                if 0 <= w <= 5:
                    models["lcm_lora_scale"] = float(w)
            elif name:
                if not -5 <= w <= 5:
                    raise usage(f"{src}: node {nid} ({t}): strength_model must be from -5 to 5, got {w}")
                loras.append({"path": name, "weight": float(w)})
                if t == "LoraLoader" and r.value(n, "strength_clip", w, kinds=(int, float)) != w:
                    r.notes.append(f"{src}: node {nid}: strength_clip differs from strength_model; lcmvideo uses "
                                   "one weight per LoRA (strength_model)")
        elif t in AD_LOADERS or t == "ADE_UseEvolvedSampling":
            _motion(r, nid, n, models, out)
        elif t == "ModelSamplingDiscrete":  # LCM workflows set the model's sampling to lcm here
            sampling = r.value(n, "sampling", kinds=(str,))
            if sampling == "lcm":
                models.setdefault("sampler", "lcm")
            elif sampling not in (None, "eps"):
                r.notes.append(f"{src}: node {nid}: ModelSamplingDiscrete {sampling!r} not carried over")
        elif n["mode"] != 4:
            r.notes.append(f"{src}: node {nid} ({t}) on the model's path not carried over")
        link = n["inputs"].get("model")
    if loras:
        models["loras"] = list(reversed(loras))  # nearest the checkpoint first, as they apply


def _motion(r: _Reader, nid: str, n: dict, models: dict, out: dict):
    """An AnimateDiff loader, or Gen2's Use Evolved Sampling with its motion models."""
    src = r.source
    loader = n
    if n["type"] == "ADE_UseEvolvedSampling":
        got = r.node(n["inputs"].get("m_models"))
        if got is not None:
            r.used.add(got[0])
            apply_ = got[1]
            mm = r.node(apply_["inputs"].get("motion_model"))
            if mm is not None:
                r.used.add(mm[0])
                name = r.value(mm[1], "model_name", kinds=(str,))
                if name:
                    models["motion"] = name
            _motion_loras(r, apply_["inputs"].get("motion_lora"), models)
            _motion_scales(r, apply_, None, out)
    else:
        name = r.value(loader, "model_name", kinds=(str,))
        if name:
            models["motion"] = name
        _motion_loras(r, loader["inputs"].get("motion_lora"), models)
        _motion_scales(r, loader, r.value(loader, "motion_scale", kinds=(int, float)), out)
        if n["type"] == "ADE_AnimateDiffLoaderV1Advanced":
            _context(r, nid, n, out)
    ctx = r.node(n["inputs"].get("context_options"))
    if ctx is not None:
        r.used.add(ctx[0])
        if ctx[1]["type"] in CONTEXTS:
            _context(r, ctx[0], ctx[1], out)
        else:
            r.notes.append(f"{src}: node {ctx[0]} ({ctx[1]['type']}): these context options are not carried over")


def _motion_scales(r: _Reader, n: dict, scale, out: dict):
    """AnimateDiff-Evolved's two motion scales: `effect_multival` blends the motion modules' output
    with their input, which is lcmvideo's motion_scale; `scale_multival` (the older loaders'
    `motion_scale`) multiplies the temporal attention's keys, which lcmvideo does not offer."""
    scale = _multival(r, n, scale, "scale_multival")
    if scale is not None and scale != 1:
        r.notes.append(f"{r.source}: AnimateDiff-Evolved's motion scale {scale} (scale_multival: the temporal "
                       "attention's keys multiplied) has no counterpart and is not carried over; lcmvideo's "
                       "motion_scale is its effect_multival")
    effect = _multival(r, n, None, "effect_multival")
    if effect is not None and effect != 1:
        out["motion_scale"] = float(effect)


def _multival(r: _Reader, n: dict, default, key: str):
    """A number from an ADE_MultivalDynamic on the loader's `key` input (its mask is noted)."""
    got = r.node(n["inputs"].get(key))
    if got is None:
        return default
    r.used.add(got[0])
    if got[1]["type"] != "ADE_MultivalDynamic":
        r.notes.append(f"{r.source}: node {got[0]} ({got[1]['type']}): this motion scale is not carried over")
        return default
    if isinstance(got[1]["inputs"].get("mask_optional"), Link):
        r.notes.append(f"{r.source}: node {got[0]}: a masked motion scale acts on the whole frame here")
    v = r.value(got[1], "float_val", kinds=(int, float))
    return v if v is not None and 0 <= v <= 10 else default


def _context(r: _Reader, nid, n, out):
    length = r.number(n, "context_length", 2, 64, nid, int)
    overlap = r.number(n, "context_overlap", 0, 63, nid, int)
    ctx = {}
    if length is not None:
        ctx["length"] = length
    if overlap is not None:
        ctx["overlap"] = min(overlap, (length or 16) - 1)
    if ctx:
        out["context"] = ctx
    if r.value(n, "closed_loop", False, kinds=(bool,)) is True:
        out["loop"] = True
    stride = r.value(n, "context_stride", 1, kinds=(int,))
    if stride not in (None, 1):
        r.notes.append(f"{r.source}: node {nid}: context_stride {stride} not carried over (windows here are "
                       "contiguous)")


def _motion_loras(r: _Reader, link, models):
    found = []
    seen = set()
    while (got := r.visit(link, seen)) is not None:
        n = got[1]
        name = r.value(n, "name", kinds=(str,)) or r.value(n, "lora_name", kinds=(str,))
        w = r.value(n, "strength", 1.0, kinds=(int, float))
        if name:
            found.append({"path": name, "weight": float(min(max(w, -5), 5))})
        link = n["inputs"].get("prev_motion_lora")
    if found:
        models["motion_loras"] = list(reversed(found))


def _conditioning(r: _Reader, link, out, positive: bool):
    """What the sampler's positive/negative input says: ('text', str), ('fizz', (text, max_frames,
    pre, app)), ('fizz_neg', ...) for a schedule's NEG output, ('ade', keyframes) or None."""
    src = r.source
    seen = set()
    while (got := r.visit(link, seen)) is not None:
        nid, n = got
        t = n["type"]
        if t == "CLIPTextEncode":
            text = r.value(n, "text", "", kinds=(str,))
            return "text", text
        if t in SCHEDULES:
            text = r.value(n, "text", "", kinds=(str,))
            max_frames = r.number(n, "max_frames", 1, 100_000, nid, int) or out.get("frames") or fizz.MAX_FRAMES
            pre = r.value(n, "pre_text", "", kinds=(str,)) or ""
            app = r.value(n, "app_text", "", kinds=(str,)) or ""
            return ("fizz_neg" if link[1] == 1 else "fizz"), (text, max_frames, pre, app)
        if t == "ADE_PromptScheduling":
            text = r.value(n, "prompts", "", kinds=(str,))
            pre = r.value(n, "prepend_text", "", kinds=(str,)) or ""
            app = r.value(n, "append_text", "", kinds=(str,)) or ""
            return "ade", fizz.ade_keyframes(text, pre, app, f"{src}: node {nid} (ADE_PromptScheduling)", r.notes)
        if t in CN_APPLY:
            if positive:
                _controlnet(r, nid, n, out)
            name = "conditioning" if t == "ControlNetApply" else ("positive" if positive else "negative")
            link = n["inputs"].get(name)
            continue
        r.notes.append(f"{src}: node {nid} ({t}) on the {'positive' if positive else 'negative'} prompt's path "
                       "not carried over")
        link = next((v for k, v in n["inputs"].items() if isinstance(v, Link) and
                     k in ("conditioning", "conditioning_to", "conditioning_1", "positive", "negative")), None)
    return None


ANNOTATORS = {"openpose": "pose_from", "dwpose": "pose_from", "dwpreprocessor": "pose_from", "canny": "canny_from"}


def _controlnet(r: _Reader, nid, n, out):
    src = r.source
    spec: dict = {}
    loader = r.node(n["inputs"].get("control_net"))
    if loader is not None:
        r.used.add(loader[0])
        name = r.value(loader[1], "control_net_name", kinds=(str,))
        if name:
            spec["model"] = name
    strength = r.value(n, "strength", kinds=(int, float))
    if strength is not None:
        spec["scale"] = float(min(max(strength, 0), 5))
    for theirs, ours in (("start_percent", "start"), ("end_percent", "end")):
        v = r.value(n, theirs, kinds=(int, float))
        if v is not None and 0 <= v <= 1:
            spec[ours] = float(v)
    if spec.get("start", 0) >= spec.get("end", 1):
        spec.pop("start", None), spec.pop("end", None)
    kind = "images"
    link = n["inputs"].get("image")
    seen = set()
    while (got := r.visit(link, seen)) is not None:
        iid, img = got
        t = img["type"]
        if t == "LoadImage":
            spec.setdefault(kind, r.value(img, "image", kinds=(str,)))
            break
        if t in ("VHS_LoadVideo", "VHS_LoadVideoPath"):
            spec["pose_from" if kind == "pose_from" else "canny_from" if kind == "canny_from" else "video"] = \
                r.value(img, "video", kinds=(str,))
            break
        if t in ("VHS_LoadImagesPath", "VHS_LoadImages"):
            if kind != "images":
                r.notes.append(f"{src}: node {iid}: an annotator over an image folder is not carried over; "
                               "the images are used as maps")
            spec["images"] = r.value(img, "directory", kinds=(str,))
            break
        low = t.lower()
        ann = next((v for k, v in ANNOTATORS.items() if k in low), None)
        if ann is not None:
            kind = ann
        else:
            r.notes.append(f"{src}: node {iid} ({t}) on ControlNet {nid}'s image path not carried over")
        link = img["inputs"].get("image") or img["inputs"].get("images")
    sources = [k for k in ("images", "video", "pose_from", "canny_from") if spec.get(k)]
    if not sources:
        r.notes.append(f"{src}: ControlNet node {nid}: no image or video loader found; not carried over")
        return
    out.setdefault("controlnet", []).append(spec)


def _latent(r: _Reader, link, out):
    got = r.node(link)
    if got is None:
        return
    nid, n = got
    r.used.add(nid)
    if n["type"] in LATENTS:
        for k in ("width", "height"):
            v = r.number(n, k, 8, 4096, nid, int)
            if v is not None:
                out[k] = v
        b = r.number(n, "batch_size", 1, 100_000, nid, int)
        if b is not None:
            out["frames"] = b
    else:
        r.notes.append(f"{r.source}: node {nid} ({n['type']}) gives the latent; only empty latents "
                       "(EmptyLatentImage) are carried over (video-to-video: lcmvideo restyle)")


def _video_combine(r: _Reader, nid, n, out):
    r.used.add(nid)
    fps = r.value(n, "frame_rate", kinds=(int, float))
    if fps is not None and 0.1 <= fps <= 240:
        out["fps"] = fps
    fmt = r.value(n, "format", kinds=(str,))
    if fmt == "image/gif":
        out["format"] = "gif"
    elif fmt and fmt.endswith("mp4"):
        out["format"] = "mp4"
    elif fmt:
        r.notes.append(f"{r.source}: node {nid}: Video Combine format {fmt!r} not carried over (mp4, gif or png)")
