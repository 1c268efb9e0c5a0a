"""Train the shapes family's motion LoRAs: one per direction, on clips that all move that way.

    python training/shapes/motion_lora.py WORKDIR            # trains (resuming where it stopped)
    python training/shapes/motion_lora.py WORKDIR --export   # fp16 LoRAs into lcmvideo/data/shapes/motion_lora

The family's text path cannot carry motion words (NOTES.md, "Motion words"); a motion LoRA carries
the direction instead, as AnimateDiff's v2 MotionLoRAs (PanLeft, TiltUp, ...) do. Only low-rank
factors on the motion modules' attention projections (to_q, to_k, to_v, to_out) learn; the image
UNet, its LCM-LoRA (fused, as sampling sees it), the motion adapter and the text encoder stay frozen.
The four directions train together: each clip of a batch goes through its own direction's factors
(one forward pass for four LoRAs that share the frozen model). The objective is train.py's: the
family's v-prediction loss under its zero-terminal-SNR schedule.

Saved in AnimateDiff's original motion-LoRA layout (`...motion_modules.M.temporal_transformer.
transformer_blocks.0.attention_blocks.K.processor.to_q_lora.down.weight`), applied as AnimateDiff
applies it: W += scale * up @ down. Deterministic under the config's seed; checkpoints and resumes
with train.py's loop. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root holds the training package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lcmvideo.shapes import world  # noqa: E402
from training.shapes import train  # noqa: E402

DIRECTIONS = ("right", "left", "up", "down")
STAGE = "motion_lora"
CONFIG = Path(__file__).parent / "configs" / "motion_lora.json"
EXPORT = Path(__file__).resolve().parents[2] / "lcmvideo" / "data" / "shapes" / "motion_lora"
# diffusers' motion UNet names -> AnimateDiff's: the motion modules' attention projections
TARGET = re.compile(r"^((?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+)\.transformer_blocks\.0\."
                    r"attn([12])\.(to_q|to_k|to_v|to_out\.0)$")


def original_key(name: str) -> str:
    """diffusers `down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_out.0` -> AnimateDiff's
    `down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_out_lora`."""
    block, attn, proj = TARGET.match(name).groups()
    proj = proj.removesuffix(".0")
    return (f"{block}.temporal_transformer.transformer_blocks.0.attention_blocks.{int(attn) - 1}."
            f"processor.{proj}_lora")


class MultiLoRA:
    """Low-rank factors for several LoRAs on one frozen Linear; each row of a batch uses the LoRA
    `select` names for it (one index per clip, the rows of a clip being consecutive)."""

    def __init__(self, base, n: int, rank: int, gen):
        import torch

        self.base = base
        self.down = torch.nn.Parameter(torch.randn(n, rank, base.in_features, generator=gen) / rank)
        self.up = torch.nn.Parameter(torch.zeros(n, base.out_features, rank))  # starts as the identity
        self.select = None  # LongTensor (clips,), an int for every row, or None: no LoRA

    def __call__(self, module, args, output):
        import torch

        (x,) = args
        if self.select is None:
            return output
        if isinstance(self.select, int):
            d, u = self.down[self.select], self.up[self.select]
            return output + (x @ d.T) @ u.T
        rows = self.select.repeat_interleave(x.shape[0] // self.select.shape[0])
        h = torch.einsum("bfi,bri->bfr", x, self.down[rows])
        return output + torch.einsum("bfr,bor->bfo", h, self.up[rows])


def attach(unet, rank: int, gen) -> dict:
    """name -> MultiLoRA on every motion-module attention projection of `unet`, hooked in."""
    out = {}
    for name, mod in unet.named_modules():
        if TARGET.match(name):
            lora = MultiLoRA(mod, len(DIRECTIONS), rank, gen)
            mod.register_forward_hook(lora)
            out[name] = lora
    return out


def attach_same(unet, loras: dict):
    """The same factors hooked into another copy of the motion UNet (the LCM-fused one the probe samples)."""
    for name, mod in unet.named_modules():
        if name in loras:
            mod.register_forward_hook(loras[name])


def select(loras: dict, which):
    for lora in loras.values():
        lora.select = which


def holder(loras: dict):
    """The factors as one Module, for the optimiser and checkpoints."""
    import torch

    m = torch.nn.Module()
    for i, name in enumerate(sorted(loras)):
        m.register_parameter(f"d{i}", loras[name].down)
        m.register_parameter(f"u{i}", loras[name].up)
    return m


def clip_loss(pred, target, temporal_weight: float):
    """MSE plus MotionDirector's appearance-debiased temporal loss: the part of a clip that changes over
    the frames is the motion, a small share of the plain loss."""
    import torch

    loss = torch.nn.functional.mse_loss(pred, target)
    if temporal_weight:
        loss = loss + temporal_weight * torch.nn.functional.mse_loss(
            pred - pred.mean(2, keepdim=True), target - target.mean(2, keepdim=True))
    return loss


def fit(trainer, loras: dict, lr: float, step, probe, stage: str = STAGE) -> float:
    """train.py's loop over the LoRAs' factors (checkpointed as one module); returns the stage's seconds."""
    params = holder(loras)
    groups = [{"params": list(params.parameters()), "lr": lr, "base_lr": lr}]
    return trainer.loop(stage, groups, step, {"lora": params}, probe=probe)


def state_dicts(loras: dict) -> dict:
    """direction -> AnimateDiff-layout state dict (fp16)."""
    out = {}
    for k, d in enumerate(DIRECTIONS):
        sd = {}
        for name, lora in loras.items():
            key = original_key(name)
            sd[f"{key}.down.weight"] = lora.down[k].detach().half().contiguous()
            sd[f"{key}.up.weight"] = lora.up[k].detach().half().contiguous()
        out[d] = sd
    return out


def load_family(lcm: bool):
    """The shipped family as lcmvideo loads it (float32, CPU), with its LCM-LoRA fused or not."""
    from lcmvideo.api import Session

    s = Session(**({} if lcm else {"lcm_lora": "none"}))
    return s.models(s.settings(prompt="x"))


class Run:
    def __init__(self, work: Path, cfg: dict, threads: int):
        import torch

        self.cfg = cfg
        self.t = train.Trainer(work, cfg["seed"], threads)
        train.STEPS[STAGE] = cfg["steps"]
        train.BATCH[STAGE] = cfg["batch"]
        train.CHECKPOINT_EVERY = cfg["checkpoint_every"]
        self.models = load_family(cfg["lcm_fused"])
        self.pipe = self.models.pipe
        for m in (self.pipe.unet, self.pipe.text_encoder, self.pipe.vae):
            m.requires_grad_(False)
        self.loras = attach(self.pipe.unet, cfg["rank"], torch.Generator().manual_seed(cfg["seed"]))
        self.scaling = self.pipe.vae.config.scaling_factor
        # sampling runs with the LCM-LoRA fused: the probe samples that model with the same factors
        self.sampled = self.models if cfg["lcm_fused"] else load_family(True)
        if not cfg["lcm_fused"]:
            attach_same(self.sampled.pipe.unet, self.loras)

    def bank(self):
        """Latent means/stds of `bank_clips` clips per direction, encoded once by the family's VAE."""
        import torch
        from safetensors.torch import load_file, save_file

        path = self.t.work / "bank.safetensors"
        if path.exists():
            return load_file(path)
        rng = np.random.default_rng([self.cfg["seed"], 4321])
        out, scenes = {}, {}
        for d in DIRECTIONS:
            means, stds = [], []
            for _ in range(self.cfg["bank_clips"]):
                s = world.sample(rng, world.FRAMES, motion=f"moving {d}")
                scenes.setdefault(d, []).append(vars(s))
                with torch.no_grad():
                    dist = self.pipe.vae.encode(train.Trainer.to_tensor(world.clip(s))).latent_dist
                means.append(dist.mean.half()), stds.append(dist.std.half())
            out[f"{d}_mean"], out[f"{d}_std"] = torch.stack(means), torch.stack(stds)
        save_file({k: v.contiguous() for k, v in out.items()}, path.with_suffix(".tmp"))
        path.with_suffix(".json").write_text(json.dumps(scenes))
        path.with_suffix(".tmp").replace(path)
        return out

    def train(self):
        import torch

        from lcmvideo.pipeline.denoise import frame_noise

        bank = self.bank()
        scenes = json.loads((self.t.work / "bank.safetensors").with_suffix(".json").read_text())
        unet, te, noise = self.pipe.unet, self.pipe.text_encoder, self.t.noise
        cfg, frames = self.cfg, world.FRAMES
        n = cfg["bank_clips"]
        unet.train()

        def step(i):
            rng, g = self.t.rng(STAGE, i), self.t.gen(STAGE, i)
            b = cfg["batch"]
            dirs = np.arange(b) % len(DIRECTIONS)
            idx = rng.integers(n, size=b)
            caps = [self.t.caption(world.Scene(**scenes[DIRECTIONS[d]][j]), rng, motion=True) for d, j in zip(dirs, idx)]
            mean = torch.stack([bank[f"{DIRECTIONS[d]}_mean"][j] for d, j in zip(dirs, idx)])
            std = torch.stack([bank[f"{DIRECTIONS[d]}_std"][j] for d, j in zip(dirs, idx)])
            x0 = ((mean.float() + std.float() * torch.randn(mean.shape, generator=g)) * self.scaling)
            x0 = x0.permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
            shared = torch.rand(b, generator=g) < cfg["shared_noise_share"]
            eps = torch.cat([frame_noise((1, *x0.shape[1:]), cfg["shared_noise"] if s else 0.0, g, "cpu", torch.float32)
                             for s in shared])
            hi = torch.rand(b, generator=g) < cfg["high_noise_share"]
            t = torch.where(hi, torch.randint(cfg["high_noise_from"], 1000, (b,), generator=g),
                            torch.randint(0, 1000, (b,), generator=g))
            xt = noise.add_noise(x0, eps, t)
            with torch.no_grad():
                emb = te(self.t.ids(caps))[0].repeat_interleave(frames, dim=0)
            select(self.loras, torch.as_tensor(dirs))
            pred = unet(xt, t, encoder_hidden_states=emb).sample
            target = self.t.target(x0, eps, t)
            return clip_loss(pred, target, cfg["temporal_weight"])

        secs = fit(self.t, self.loras, cfg["lr"], step, self.probe)
        (self.t.work / STAGE).mkdir(exist_ok=True)
        from safetensors.torch import save_file

        for d, sd in state_dicts(self.loras).items():
            save_file(sd, self.t.work / STAGE / f"{d}.safetensors")
        info = {"seconds": round(secs, 1), "steps": cfg["steps"], "batch": cfg["batch"], "seed": cfg["seed"],
                "rank": cfg["rank"], "lcm_fused": cfg["lcm_fused"]}
        (self.t.work / STAGE / "done").write_text(json.dumps(info))
        self.t.log(STAGE, f"done: {info}")

    def probe(self) -> str:
        """Per direction: clips (4 LCM steps, guidance 1, shared noise as shipped) whose track goes its way."""
        from training.shapes import quality

        pipe = quality.clip_pipeline(self.sampled, "lcm")
        self.pipe.unet.eval()
        out = []
        try:
            for k, d in enumerate(DIRECTIONS):
                select(self.loras, k)
                hits, speed = 0, []
                for seed, prompt in ((1, "a white square"), (2, "a red circle on a black background"),
                                     (3, "a green triangle on a gray background")):
                    v = quality.velocity(_reads(quality.generate_clip(pipe, prompt, seed, 4, 1.0,
                                                                      shared_noise=self.cfg["shared_noise"])))
                    hits += quality.goes_the_right_way(v, f"moving {d}")
                    speed.append(v and (round(v[0], 1), round(v[1], 1)))
                out.append(f"{d} {hits}/3 {speed}")
        finally:
            self.pipe.unet.train()
        return "; ".join(out)


def _reads(frames):
    from lcmvideo.shapes import analyse

    return analyse.read_clip(frames)


def export(work: Path, dest: Path = EXPORT):
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for d in DIRECTIONS:
        shutil.copy(work / STAGE / f"{d}.safetensors", tmp / f"{d}.safetensors")
    shutil.copy(work / STAGE / "done", tmp / "training.json")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    print(f"exported to {dest}: {sum(p.stat().st_size for p in dest.iterdir()) / 1e3:.0f} KB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--threads", type=int, default=1,
                    help="1: on a shared CPU two threads spin against each other (measured 7x slower)")
    ap.add_argument("--steps", type=int, help="[default: the config's]")
    ap.add_argument("--export", action="store_true")
    a = ap.parse_args(argv)
    if a.export:
        export(a.work)
        return
    cfg = json.loads(a.config.read_text())
    if a.steps:
        cfg["steps"] = a.steps
    Run(a.work, cfg, a.threads).train()


if __name__ == "__main__":
    main()
