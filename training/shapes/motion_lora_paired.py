"""An experiment, not the shipped recipe: the shapes motion LoRAs trained on paired targets.

    python training/shapes/motion_lora_paired.py WORKDIR            # trains (resuming), configs/motion_lora_paired.json
    python training/shapes/motion_lora_paired.py WORKDIR --export   # fp16 LoRAs into lcmvideo/data/shapes/motion_lora

For a seed, the target is the clip the family itself makes from that seed's noise with its shape
drawn again crossing the same place the LoRA's way; the loss is on LCM's estimate of it, at the first
step from the seed's own noise and at a later step from the target re-noised as LCM re-noises. The
shipped recipe (motion_lora.py) rewards the direction by 1-2 % of its loss; this one by all of it.
What it measured is in NOTES.md ("Motion LoRAs"). Factors, layout and export are motion_lora.py's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lcmvideo.shapes import world  # noqa: E402
from training.shapes import motion_lora, train  # noqa: E402
from training.shapes.motion_lora import DIRECTIONS, STAGE, MultiLoRA, _reads, clip_loss, fit, select, state_dicts  # noqa: E402

CONFIG = Path(__file__).parent / "configs" / "motion_lora_paired.json"
# "motion_modules": the motion modules' Linears (the feed-forward and proj_out too), which AnimateDiff's
# motion-LoRA layout cannot hold; "attention": the layout's own projections. proj_in is left out (the
# shipped run trained without it).
WIDE = re.compile(r"^.*motion_modules\.\d+\.(proj_out|transformer_blocks\.0\.(attn[12]\.(to_q|to_k|to_v|"
                  r"to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))$")


def attach(unet, rank: int, gen, wide: bool) -> dict:
    out = {}
    for name, mod in unet.named_modules():
        if (WIDE if wide else motion_lora.TARGET).match(name):
            lora = MultiLoRA(mod, len(DIRECTIONS), rank, gen)
            # some of these Linears are called with keyword arguments
            mod.register_forward_hook(lambda m, a, kw, o, lora=lora: lora(m, a or tuple(kw.values())[:1], o),
                                      with_kwargs=True)
            out[name] = lora
    return out


def open_family():
    """A Session on the shipped family as users sample it (LCM-LoRA fused, float32, CPU) and its models."""
    import os

    os.environ["LCMVIDEO_EMBEDDED"] = "shapes"
    from lcmvideo.api import Session

    s = Session()
    return s, s.models(s.settings(prompt="x"))


def start_noise(seed: int):
    """The starting noise lcmvideo's render draws for a 16-frame 64 px clip under `seed` (the family's shared share)."""
    import torch

    from lcmvideo.pipeline.denoise import frame_noise

    return frame_noise((1, 4, world.FRAMES, 8, 8), train.SHARED_NOISE, torch.Generator("cpu").manual_seed(seed),
                       "cpu", torch.float32)


def moved(shape: str, colour: str, background: str, cx: float, cy: float, r: float, speed: float, direction: str):
    """The scene whose shape crosses (cx, cy) at mid-clip going `direction`, kept inside the picture."""
    motion = f"moving {direction}"
    dx, dy = world.MOTIONS[motion]
    travel = speed * (world.FRAMES - 1)
    lo, hi = r + 2, world.SIZE - r - 2

    def start(c, d):
        a, b = (lo, hi - travel) if d > 0 else ((lo + travel, hi) if d < 0 else (lo, hi))
        return float(np.clip(c - d * travel / 2, a, max(a, b)))

    return world.Scene(shape, colour, background, start(cx, dx), start(cy, dy), r, motion, speed)


class PairedRun:
    def __init__(self, work: Path, cfg: dict, threads: int):
        import torch

        self.cfg = cfg
        self.t = train.Trainer(work, cfg["seed"], threads)
        train.STEPS[STAGE] = cfg["steps"]
        train.BATCH[STAGE] = cfg["batch"]
        train.CHECKPOINT_EVERY = cfg["checkpoint_every"]
        self.session, self.models = open_family()
        self.pipe = self.models.pipe
        for m in (self.pipe.unet, self.pipe.text_encoder, self.pipe.vae):
            m.requires_grad_(False)
        self.loras = attach(self.pipe.unet, cfg["rank"], torch.Generator().manual_seed(cfg["seed"]),
                            cfg["targets"] == "motion_modules")
        self.scaling = self.pipe.vae.config.scaling_factor

    def render(self, prompt: str, seed: int):
        return self.session.render(prompt=prompt, frames=world.FRAMES, seed=seed, steps=4)

    def bank(self):
        """Paired examples: a seed and caption, and per direction the clip the LoRA is to give from that
        seed's noise, encoded by the family's VAE: the family's own clip (no LoRA, 4 LCM steps), its shape
        drawn again crossing the same place the direction's way. Built once."""
        import torch
        from safetensors.torch import load_file, save_file

        path = self.t.work / "pairs.safetensors"
        if path.exists():
            return load_file(path), json.loads(path.with_suffix(".json").read_text())
        rng = np.random.default_rng([self.cfg["seed"], 4321])
        targets, meta, k = {d: [] for d in DIRECTIONS}, [], 0
        while len(meta) < self.cfg["bank_clips"]:
            k += 1
            scene = world.sample(rng, world.FRAMES)
            caption, seed = world.caption(scene, rng), self.cfg["seed"] % 10**6 * 1000 + k
            reads = _reads(self.render(caption, seed))
            p = np.array([(r.x, r.y) for r in reads])
            ok = ~np.isnan(p).any(axis=1)
            r, speed = float(rng.uniform(*world.RADIUS)), float(rng.uniform(*world.SPEED))
            if ok.sum() < world.FRAMES // 2:  # the family lost the shape: nothing to move
                continue
            cx, cy = np.median(p[ok], axis=0)
            for d in DIRECTIONS:
                clip = world.clip(moved(scene.shape, scene.colour, reads[0].background, cx, cy, r, speed, d))
                with torch.no_grad():
                    lat = self.pipe.vae.encode(train.Trainer.to_tensor(clip)).latent_dist.mean * self.scaling
                targets[d].append(lat.permute(1, 0, 2, 3).half())  # (C, F, h, w)
            meta.append({"seed": seed, "caption": caption})
            if len(meta) % 100 == 0:
                self.t.log(STAGE, f"bank {len(meta)}/{self.cfg['bank_clips']}")
        out = {d: torch.stack(v).contiguous() for d, v in targets.items()}
        save_file(out, path.with_suffix(".tmp"))
        path.with_suffix(".json").write_text(json.dumps(meta))
        path.with_suffix(".tmp").replace(path)
        return out, meta

    def train(self):
        import torch

        from lcmvideo.pipeline.denoise import frame_noise

        bank, meta = self.bank()
        noise0 = torch.cat([start_noise(m["seed"]) for m in meta])
        unet, te, sched = self.pipe.unet, self.pipe.text_encoder, self.pipe.scheduler
        alphas = sched.alphas_cumprod
        cfg, n = self.cfg, len(meta)
        later = {}
        for k in range(2, 9):  # the timesteps after the first of every LCM step count users run
            sched.set_timesteps(k)
            later[k] = [int(t) for t in sched.timesteps[1:]]
        first_t = int(sched.timesteps[0])
        unet.train()

        def step(i):
            rng, g = self.t.rng(STAGE, i), self.t.gen(STAGE, i)
            b = cfg["batch"]
            dirs = np.arange(b) % len(DIRECTIONS)
            idx = rng.integers(n, size=b)
            x0 = torch.stack([bank[DIRECTIONS[d]][j] for d, j in zip(dirs, idx)]).float()
            first = rng.random(b) < cfg["first_step_share"]
            t = torch.tensor([first_t if f else int(rng.choice(later[int(rng.integers(2, 9))])) for f in first])
            a = alphas[t].view(-1, 1, 1, 1, 1)
            eps = torch.cat([frame_noise((1, *x0.shape[1:]), train.SHARED_NOISE, g, "cpu", torch.float32)
                             for _ in range(b)])
            # the first step sees the seed's own noise; a later one the target re-noised as LCM re-noises
            xt = torch.where(torch.as_tensor(first).view(-1, 1, 1, 1, 1), noise0[idx],
                             a.sqrt() * x0 + (1 - a).sqrt() * eps)
            with torch.no_grad():
                emb = te(self.t.ids([meta[j]["caption"] for j in idx]))[0].repeat_interleave(world.FRAMES, dim=0)
            select(self.loras, torch.as_tensor(dirs))
            v = unet(xt, t, encoder_hidden_states=emb).sample
            pred = a.sqrt() * xt - (1 - a).sqrt() * v  # the clip LCM takes as this step's estimate
            return clip_loss(pred, x0, cfg["temporal_weight"])

        secs = fit(self.t, self.loras, cfg["lr"], step, self.probe)
        (self.t.work / STAGE).mkdir(exist_ok=True)
        from safetensors.torch import save_file

        if self.cfg["targets"] == "attention":  # AnimateDiff's layout; the wider set stays in the checkpoint
            for d, sd in state_dicts(self.loras).items():
                save_file(sd, self.t.work / STAGE / f"{d}.safetensors")
        info = {"seconds": round(secs, 1), "steps": cfg["steps"], "batch": cfg["batch"], "seed": cfg["seed"],
                "rank": cfg["rank"], "bank_clips": n, "objective": "paired", "targets": cfg["targets"]}
        (self.t.work / STAGE / "done").write_text(json.dumps(info))
        self.t.log(STAGE, f"done: {info}")

    def probe(self) -> str:
        """Per direction: clips rendered as users render them (4 LCM steps) whose track goes its way."""
        from training.shapes import quality

        self.pipe.unet.eval()
        out = []
        try:
            for k, d in enumerate(DIRECTIONS):
                select(self.loras, k)
                hits = sum(quality.goes_the_right_way(quality.velocity(_reads(self.render(p, s))), f"moving {d}")
                           for p in quality.MOTION_PROMPTS[:3] for s in (1, 2))
                out.append(f"{d} {hits}/6")
        finally:
            select(self.loras, None)
            self.pipe.unet.train()
        return "; ".join(out)


def export(work: Path, dest: Path = motion_lora.EXPORT):
    """The checkpoint's factors, per direction, in peft's layout (`unet.<layer>.lora_A.weight` = down,
    `lora_B` = up, no alpha: W += up @ down, as AnimateDiff applies its own), fp16, into the family."""
    import shutil

    import torch
    from safetensors.torch import save_file

    cfg = json.loads((work / STAGE / "done").read_text())
    _, models = open_family()
    wide = cfg["targets"] == "motion_modules"
    names = sorted(n for n, _ in models.pipe.unet.named_modules() if (WIDE if wide else motion_lora.TARGET).match(n))
    state = torch.load(work / f"{STAGE}.ckpt.pt", weights_only=True)["lora"]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, d in enumerate(DIRECTIONS):
        sd = {}
        for i, name in enumerate(names):
            sd[f"unet.{name}.lora_A.weight"] = state[f"d{i}"][k].half().contiguous()
            sd[f"unet.{name}.lora_B.weight"] = state[f"u{i}"][k].half().contiguous()
        save_file(sd, tmp / f"{d}.safetensors")
    (tmp / "training.json").write_text(json.dumps(cfg))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    print(f"exported to {dest}: {sum(p.stat().st_size for p in dest.iterdir()) / 1e3:.0f} KB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", action="store_true", help="the trained LoRAs into lcmvideo/data/shapes/motion_lora")
    a = ap.parse_args(argv)
    if a.export:
        export(a.work)
        return
    PairedRun(a.work, json.loads(a.config.read_text()), a.threads).train()


if __name__ == "__main__":
    main()
