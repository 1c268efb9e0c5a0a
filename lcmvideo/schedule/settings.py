"""The settings of a clip as plain dataclasses: what schedule files, flags and sidecars say.

Pure Python. The functions that fill in or override settings return new objects: a Settings
given to a Session or a render is never changed behind the caller's back.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import usage

TRAVEL = ("guidance", "lcm_lora_scale", "controlnet_scale", "strength", "ip_adapter_scale",
          "motion_scale")  # per-keyframe numbers
INTERPOLATIONS = ("linear", "slerp")
SIDECAR_MARK = "lcmvideo"  # the top-level key that tells a render's sidecar JSON from a schedule

# ControlNet sources: where each frame's conditioning image comes from
SOURCE_KEYS = ("images", "video", "openpose", "pose_from", "canny_from", "position_from")
ANNOTATED = ("pose_from", "canny_from", "position_from")  # a video whose frames an annotator turns into maps
INPUT = "<input>"  # for those: the clip being restyled
FITS = ("crop", "pad", "stretch")
SAMPLERS = ("lcm", "tcd")  # LCMScheduler; TCDScheduler (strategic stochastic sampling, its gamma)
FREE_INIT_FILTERS = ("gaussian", "butterworth", "ideal", "box")  # FreeInit's low-pass filters
INIT_STRENGTH = 0.7  # init_strength's default without SparseCtrl (with it: 0, pure noise)


@dataclass
class LoraRef:
    path: str
    weight: float = 1.0  # multiplier on the LoRA's own alpha/rank scale
    name: str | None = None  # how keyframes' lora_weights refer to it; default: the file's stem

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        if self.path.lower().startswith("embedded:"):  # embedded:right -> right
            return self.path.split(":", 1)[1]
        return Path(self.path.rstrip("/\\")).name.split(".")[0]


@dataclass
class LcmMap:
    """The LCM-LoRA's scale over the denoising steps (animatediff-cli-prompt-travel's `lcm_map`):
    `start_scale` until `gradient_start` of the steps, then linear to `end_scale` at `gradient_end`,
    held after. It multiplies `lcm_lora_scale` (1 by default)."""

    start_scale: float = 1.0
    end_scale: float = 1.0
    gradient_start: float = 0.0  # fraction of the steps
    gradient_end: float = 1.0

    def scale(self, step: int, total: int) -> float:
        """The factor at step `step` (0-based) of `total`, by prompt-travel's rule (progress = (step + 1) / total)."""
        progress = (step + 1) / total
        if progress < self.gradient_start:
            return self.start_scale
        if progress > self.gradient_end:
            return self.end_scale
        span = self.gradient_end - self.gradient_start
        f = 0.0 if span < 1e-4 else (progress - self.gradient_start) / span
        return self.start_scale + (self.end_scale - self.start_scale) * f


@dataclass
class ModelPaths:
    base: str | None = None  # SD1.5: diffusers folder, HF cache id, single .safetensors/.ckpt, or a name in models_dir
    motion: str | None = None  # AnimateDiff motion module: diffusers folder or original single file
    lcm_lora: str | None = None  # LCM-LoRA file/folder; "none" for an LCM-distilled base
    lcm_lora_scale: float = 1.0  # strength of the LCM-LoRA (travels per keyframe too)
    loras: list[LoraRef] = field(default_factory=list)  # extra style LoRAs
    # AnimateDiff motion LoRAs (v2_lora_ZoomIn.ckpt, embedded:right); their names share the style LoRAs'
    motion_loras: list[LoraRef] = field(default_factory=list)
    models_dir: str | None = None  # an A1111/ComfyUI folder to find models in by name
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16
    fuse: bool = True  # fuse LoRAs into the weights (faster); false keeps them as adapters
    vae: str | None = None  # a VAE (single file, diffusers folder, HF id, name) or TAESD; None = the base's own
    embeddings: list[str] = field(default_factory=list)  # textual-inversion files, besides those in models_dir
    clip_skip: int = 1  # A1111's convention: 1 = the text encoder's last layer, 2 = the one before it, ...
    sampler: str = "lcm"  # lcm (LCMScheduler) | tcd (TCDScheduler)
    gamma: float = 0.3  # TCD's stochasticity (diffusers' eta): 0 = no fresh noise between steps
    lcm_map: LcmMap | None = None  # the LCM-LoRA's scale over the denoising steps
    # AnimateDiff v3's SparseCtrl RGB (v3_sd15_sparsectrl_rgb.ckpt): init_image conditions the clip through it
    sparsectrl: str | None = None


MODEL_KEYS = frozenset(f.name for f in fields(ModelPaths))  # settings that choose and load models
# model settings a loaded set takes without loading anything again (how text is encoded and sampled)
SOFT_MODEL_KEYS = frozenset({"clip_skip", "sampler", "gamma", "lcm_map"})


@dataclass
class Context:
    length: int = 16  # frames the motion module sees at once (AnimateDiff was trained on 16)
    overlap: int = 4  # frames shared by neighbouring windows


@dataclass
class ControlSpec:
    model: str | None = None  # ControlNet: diffusers folder, single file, HF id, name; None = embedded tiny one
    images: str | None = None  # a folder of images numbered by frame (0000.png, 0016.png), or one image
    video: str | None = None  # a video of conditioning frames, one per clip frame
    openpose: str | None = None  # a folder of OpenPose JSON keypoint files numbered by frame
    pose_from: str | None = None  # a video of a person: poses extracted (needs lcmvideo[pose])
    canny_from: str | None = None  # a video: its Canny edges, white on black (for canny ControlNets)
    position_from: str | None = None  # a shapes-world video: a blob where its shape is (the embedded net's maps)
    scale: float = 1.0  # conditioning scale of this net (times the schedule's controlnet_scale)
    start: float = 0.0  # fraction of the denoising steps where this net starts acting
    end: float = 1.0  # ... and stops
    missing: str = "none"  # frames without an image in a sparse folder: none (no control) | nearest
    fit: str = "crop"  # crop (cover, centre crop) | pad (fit inside, black bars) | stretch
    count: str = "error"  # video/pose_from with another frame count: error | stretch (resample evenly)
    size: list | str | None = None  # canvas of pixel-coordinate OpenPose JSON: [w, h], "WxH" or its image/video

    @property
    def source(self) -> tuple[str, str]:
        for k in SOURCE_KEYS:
            if getattr(self, k):
                return k, getattr(self, k)
        raise usage(f"controlnet: needs one of {', '.join(SOURCE_KEYS)}")


@dataclass
class IpAdapterSpec:
    """An IP-Adapter: an image (or a folder of images numbered by keyframe) as a prompt."""

    model: str  # ip-adapter_sd15 / ip-adapter-plus_sd15 (.bin or .safetensors), or a name in models_dir
    image: str  # an image, or a folder of images numbered by frame (0000.png, 0016.png): embeddings blend between
    scale: float = 1.0  # strength of the image prompt (travels per keyframe as ip_adapter_scale)
    encoder: str | None = None  # CLIP image encoder folder or file; None = beside the model or in clip_vision


@dataclass
class FreeInit:
    """FreeInit (Wu et al. 2023; diffusers' enable_free_init): the sampler runs `iterations` times,
    each run after the first starting from the last result's low frequencies, noised again, with
    fresh noise's high frequencies (stop frequencies normalised 0-1, spatial and temporal)."""

    iterations: int = 3  # sampler runs in all (1 = FreeInit off)
    filter: str = "butterworth"  # gaussian | butterworth | ideal | box
    spatial_stop: float = 0.25
    temporal_stop: float = 0.25
    order: int = 4  # butterworth's: high ~ ideal, low ~ gaussian


@dataclass
class Keyframe:
    frame: int  # resolved frame index
    key: str  # the key as written: "8", "-1", "0.5"
    prompt: str
    negative_prompt: str | None = None  # None: the global negative prompt
    hold: float | None = None  # fraction of the gap to the next keyframe held before blending; None: global
    params: dict[str, float] = field(default_factory=dict)  # travelled values set here; LoRAs as "lora:NAME"


# Where a Settings came from: kept beside the values, never written into a schedule or sidecar
PROVENANCE = ("where", "sources", "job")


@dataclass
class Settings:
    prompt: str = ""  # shorthand for keyframes: {0: prompt}
    keyframes: dict[str, Any] = field(default_factory=dict)  # key as written -> prompt or {prompt, ...}
    head: str = ""  # text put before every keyframe's prompt
    tail: str = ""  # text put after every keyframe's prompt
    negative_prompt: str = ""  # used only when guidance > 1
    interpolation: str = "linear"  # linear | slerp: how text embeddings blend between keyframes
    hold: float = 0.0  # default hold (0-1): fraction of each gap a keyframe stays unblended
    loop: bool = False  # blend the end back into the first keyframe (for seamless loops)
    context: Context = field(default_factory=Context)
    frames: int = 16  # clip length in frames
    width: int | None = None  # pixels, multiple of 8; None = the model's native size
    height: int | None = None
    fps: float = 8.0  # frames per second of the output
    steps: int = 4  # LCM denoising steps; 2-8 is LCM's range
    guidance: float = 1.0  # classifier-free guidance; <= 1 turns CFG off (half the UNet work)
    controlnet_scale: float = 1.0  # ControlNet conditioning scale (travels per keyframe)
    strength: float = 0.5  # img2img strength for restyling (travels per keyframe)
    motion_scale: float = 1.0  # the motion modules' residual multiplied: 0 = frames drawn alone (travels)
    seed: int | None = None  # None = a random seed, printed and recorded
    shared_noise: float | None = None  # 0-1: share of the frames' noise they have in common; None = the model's
    models: ModelPaths = field(default_factory=ModelPaths)
    controlnet: list[ControlSpec] = field(default_factory=list)  # ControlNets with their conditioning
    ip_adapter: IpAdapterSpec | None = None  # an image prompt
    init_image: str | None = None  # img2vid: a picture the clip starts from (frame 0 looks like it)
    # how strongly the picture holds in the starting latents: 0 = not at all, 1 = every frame starts from it;
    # None = INIT_STRENGTH, or 0 with SparseCtrl (the condition carries the picture): see init_strength_of
    init_strength: float | None = None
    sparsectrl_scale: float = 1.0  # how strongly SparseCtrl's condition (the init image at frame 0) holds
    init_fit: str = "crop"  # how the picture is fitted to the clip's size: crop | pad | stretch
    free_init: FreeInit | None = None  # FreeInit's sampler re-runs; None = off
    output: str | None = None  # .mp4, .gif or a folder for PNG frames
    format: str | None = None  # mp4 | gif | png; None = from the output's extension
    resolved: list[Keyframe] = field(default_factory=list, repr=False)  # keyframes by frame, after finish()
    warnings: list[str] = field(default_factory=list, repr=False)  # lint, after finish()
    # provenance
    where: Any = field(default=None, repr=False, compare=False)  # parse.Where: the file and its key lines
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)  # model key -> "flag"
    job: str | None = field(default=None, repr=False, compare=False)  # a batch job's key, for skipping done jobs

    def to_dict(self) -> dict:
        """The settings a schedule file can say (what sidecars record and `convert` writes)."""
        d = asdict(replace(self, where=None, sources={}, job=None))
        for k in ("resolved", "warnings", "prompt", *PROVENANCE):
            d.pop(k)
        return d

    def copy(self) -> Settings:
        """A deep copy sharing only the (read-only) provenance."""
        return copy.deepcopy(self, {id(self.where): self.where, id(self.sources): dict(self.sources)})


def uses_sparsectrl(s: Settings) -> bool:
    """Whether the settings name a SparseCtrl (models.sparsectrl, not "none")."""
    return s.models.sparsectrl is not None and s.models.sparsectrl.lower() != "none"


def init_strength_of(s: Settings) -> float:
    """The init_strength a render uses: the one given, else 0 with SparseCtrl (the clip starts from
    pure noise and the condition carries the picture) and INIT_STRENGTH without."""
    if s.init_strength is not None:
        return s.init_strength
    return 0.0 if uses_sparsectrl(s) else INIT_STRENGTH


@dataclass
class FrameRow:
    frame: int
    blend: list[tuple[int, float]]  # (index into Settings.resolved, weight), weights sum to 1
    params: dict[str, float]  # every travelled parameter's value at this frame
