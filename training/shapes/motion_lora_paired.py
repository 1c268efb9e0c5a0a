"""The shipped shapes motion LoRAs, trained on per-seed targets (configs/motion_lora_paired.json).

    python training/shapes/motion_lora_paired.py WORKDIR            # trains (resuming)
    python training/shapes/motion_lora_paired.py WORKDIR --export   # fp16 LoRAs into lcmvideo/data/shapes/motion_lora

Every seed gets one answer, where the denoising loss (motion_lora.py) rewards the direction by 1-2 %
of its loss. The shipped objective, "translated": the target is the family's own sampling from that
seed's noise (no LoRA, 4 LCM steps) with its frames moved the LoRA's way in latent space, so it
keeps the family's code for the shape and its colour; the loss is on LCM's estimate at the first step
(the seed's own noise) and at a later step reached by sampling with the LoRA as it now is. The
others are kept as measured in NOTES.md ("Motion LoRAs"): "paired" (the default: the shape drawn
again moving, re-noised), "on_policy", and a pixel loss. Factors, layout and export are motion_lora.py's.
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
FOCUS = STAGE + "_focus"  # the optional second stage's checkpoint
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


def start_noise(seed: int, share: float):
    """The starting noise lcmvideo's render draws for a 16-frame 64 px clip under `seed` and `share`."""
    import torch

    from lcmvideo.pipeline.denoise import frame_noise

    return frame_noise((1, 4, world.FRAMES, 8, 8), share, torch.Generator("cpu").manual_seed(seed),
                       "cpu", torch.float32)


def _start(c: float, d: int, r: float, speed: float) -> float:
    """Where a shape of radius r going d (-1, 0, 1) along one axis at `speed` starts so that it crosses
    c at mid-clip, kept inside the picture."""
    travel = speed * (world.FRAMES - 1)
    lo, hi = r + 2, world.SIZE - r - 2
    a, b = (lo, hi - travel) if d > 0 else ((lo + travel, hi) if d < 0 else (lo, hi))
    return float(np.clip(c - d * travel / 2, a, max(a, b)))


def moved(shape: str, colour: str, background: str, cx: float, cy: float, r: float, speed: float, direction: str):
    """The scene whose shape crosses (cx, cy) at mid-clip going `direction`, kept inside the picture."""
    motion = f"moving {direction}"
    dx, dy = world.MOTIONS[motion]
    return world.Scene(shape, colour, background, _start(cx, dx, r, speed), _start(cy, dy, r, speed), r, motion, speed)


def sample_clips(unet, sched, seeds: list[int], emb, steps: int, share: float, upto: int | None = None):
    """LCM's multistep sampling of one clip per seed exactly as lcmvideo's render runs it (the seed's
    start noise and re-noising draws, LCMScheduler's step): the clips (clips, C, F, h, w), or with
    `upto` the latents and timestep that step `upto` of the `steps` starts from."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from lcmvideo.pipeline.denoise import frame_noise

    shape = (1, 4, world.FRAMES, 8, 8)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    x = torch.cat([frame_noise(shape, share, g, "cpu", torch.float32) for g in gens])
    sched.set_timesteps(steps)
    ts, al = [int(t) for t in sched.timesteps], sched.alphas_cumprod
    for i, t in enumerate(ts):
        if i == upto:
            return x, t
        v = unet(x, torch.tensor(t), encoder_hidden_states=emb).sample
        c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(t)
        x0 = c_out * (al[t].sqrt() * x - (1 - al[t]).sqrt() * v) + c_skip * x
        if i == len(ts) - 1:
            return x0
        eps = []
        for g in gens:  # LCMScheduler draws its own noise, which lcmvideo replaces by shared noise
            randn_tensor(shape, generator=g)
            eps.append(frame_noise(shape, share, g, "cpu", torch.float32))
        a = al[ts[i + 1]]
        x = a.sqrt() * x0 + (1 - a).sqrt() * torch.cat(eps)


def shift_latents(z, offsets):
    """Clips (B, C, F, h, w) with frame f of clip b moved by offsets[b, f] = (dx, dy) latent pixels
    (bicubic, edges repeated): the family's own clip made to move without leaving its latent code."""
    import torch
    import torch.nn.functional as F

    b, c, f, h, w = z.shape
    frames = z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    theta = torch.zeros(b * f, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    off = torch.as_tensor(offsets, dtype=torch.float32).reshape(b * f, 2)
    theta[:, 0, 2], theta[:, 1, 2] = -off[:, 0] * 2 / w, -off[:, 1] * 2 / h
    grid = F.affine_grid(theta, frames.shape, align_corners=False)
    out = F.grid_sample(frames, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def track_offsets(cx: float, cy: float, speed: float, direction: str, r: float = 9.0):
    """Per-frame (dx, dy) pixels that carry a shape at (cx, cy) across its place `direction`'s way
    at `speed`, kept inside the picture (as `moved`)."""
    dx, dy = world.MOTIONS[f"moving {direction}"]
    f = np.arange(world.FRAMES)
    return np.stack([_start(cx, dx, r, speed) + dx * speed * f - cx if dx else 0 * f,
                     _start(cy, dy, r, speed) + dy * speed * f - cy if dy else 0 * f], axis=1)


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
        # the share of noise frames have in common, in training and in the probe's renders
        self.share = cfg.get("shared_noise", self.models.shared_noise)

    def render(self, prompt: str, seed: int):
        frames = self.session.render(prompt=prompt, frames=world.FRAMES, seed=seed, steps=4, shared_noise=self.share)
        # the Session loads the family again when its folder changes (an export into it): that set has no LoRA
        if self.session.models(self.session.settings(prompt=prompt)).pipe is not self.pipe:
            raise SystemExit("the shapes family changed on disk during training; the probe would measure it "
                             "without the LoRA (resume the run: it continues from its checkpoint)")
        return frames

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

    def family_bank(self, meta):
        """Per bank seed, the family's own sampling with no LoRA: its first step's estimate, its clip
        (latents) and where its shape sits. Built once."""
        import torch
        from safetensors.torch import load_file, save_file

        path = self.t.work / "family.safetensors"
        if path.exists():
            return load_file(path)
        unet, sched, te = self.pipe.unet, self.pipe.scheduler, self.pipe.text_encoder
        first, final, place = [], [], []
        select(self.loras, None)
        with torch.no_grad():
            for k, m in enumerate(meta):
                emb = te(self.t.ids([m["caption"]]))[0].repeat_interleave(world.FRAMES, dim=0)
                x, t = sample_clips(unet, sched, [m["seed"]], emb, 4, self.share, upto=0)
                a = sched.alphas_cumprod[t]
                first.append(a.sqrt() * x - (1 - a).sqrt() * unet(x, torch.tensor(t), encoder_hidden_states=emb).sample)
                z = sample_clips(unet, sched, [m["seed"]], emb, 4, self.share)
                final.append(z)
                img = self.pipe.vae.decode(z[0].permute(1, 0, 2, 3) / self.scaling).sample
                frames = ((img.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
                p = np.array([(r.x, r.y) for r in _reads(frames)])
                ok = ~np.isnan(p).any(axis=1)
                place.append(np.median(p[ok], axis=0) if ok.any() else (world.SIZE / 2, world.SIZE / 2))
                if (k + 1) % 100 == 0:
                    self.t.log(STAGE, f"family bank {k + 1}/{len(meta)}")
        out = {"first": torch.cat(first), "final": torch.cat(final), "place": torch.tensor(np.array(place))}
        save_file(out, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        return out

    def train(self):
        import torch

        from lcmvideo.pipeline.denoise import frame_noise

        bank, meta = self.bank()
        noise0 = torch.cat([start_noise(m["seed"], self.share) for m in meta])
        unet, te, sched = self.pipe.unet, self.pipe.text_encoder, self.pipe.scheduler
        alphas = sched.alphas_cumprod
        cfg, n = self.cfg, len(meta)
        later = {}
        for k in range(2, 9):  # the timesteps after the first of every LCM step count users run
            sched.set_timesteps(k)
            later[k] = [int(t) for t in sched.timesteps[1:]]
        first_t = int(sched.timesteps[0])
        unet.train()

        def draw(rng):
            """A batch: each clip's direction (the stage's in turn), bank seed and caption embedding."""
            b = cfg["batch"]
            dirs = self.dirs[np.arange(b) % len(self.dirs)]
            idx = rng.integers(n, size=b)
            with torch.no_grad():
                emb = te(self.t.ids([meta[j]["caption"] for j in idx]))[0].repeat_interleave(world.FRAMES, dim=0)
            return b, dirs, idx, emb

        def rollout(rng, idx, emb):
            """A later step's start (latents, timestep) as lcmvideo's sampler reaches it for the batch's
            seeds with the LoRA as it now is, in a 2-8-step schedule."""
            k = int(rng.integers(2, 9))
            with torch.no_grad():
                return sample_clips(unet, sched, [meta[j]["seed"] for j in idx], emb, k, self.share,
                                    upto=int(rng.integers(1, k)))

        def step(i):
            rng, g = self.t.rng(self.stage, i), self.t.gen(self.stage, i)
            b, dirs, idx, emb = draw(rng)
            x0 = torch.stack([bank[DIRECTIONS[d]][j] for d, j in zip(dirs, idx)]).float()
            first = rng.random(b) < cfg["first_step_share"]
            t = torch.tensor([first_t if f else int(rng.choice(later[int(rng.integers(2, 9))])) for f in first])
            a = alphas[t].view(-1, 1, 1, 1, 1)
            eps = torch.cat([frame_noise((1, *x0.shape[1:]), self.share, g, "cpu", torch.float32)
                             for _ in range(b)])
            # the first step sees the seed's own noise; a later one the target re-noised as LCM re-noises
            xt = torch.where(torch.as_tensor(first).view(-1, 1, 1, 1, 1), noise0[idx],
                             a.sqrt() * x0 + (1 - a).sqrt() * eps)
            select(self.loras, torch.as_tensor(dirs))
            v = unet(xt, t, encoder_hidden_states=emb).sample
            pred = a.sqrt() * xt - (1 - a).sqrt() * v  # the clip LCM takes as this step's estimate
            return clip_loss(pred, x0, cfg["temporal_weight"])

        def on_policy(i):
            # a later step starts where lcmvideo's sampler with the LoRA as it now is gets for the seed,
            # not from the target re-noised: the LoRA's own first guess is what users' later steps see
            rng = self.t.rng(self.stage, i)
            _, dirs, idx, emb = draw(rng)
            x0 = torch.stack([bank[DIRECTIONS[d]][j] for d, j in zip(dirs, idx)]).float()
            select(self.loras, torch.as_tensor(dirs))
            xt, t = (noise0[idx], first_t) if rng.random() < cfg["first_step_share"] else rollout(rng, idx, emb)
            a = alphas[t]
            v = unet(xt, torch.tensor(t), encoder_hidden_states=emb).sample
            return loss_of(a.sqrt() * xt - (1 - a).sqrt() * v, x0)

        fam = self.family_bank(meta) if cfg.get("objective") == "translated" else None

        def translated(i):
            # the target is the family's own sampling with its frames moved (latent space, so it keeps
            # the family's code for the shape): its first guess moved at the first step, its clip moved
            # at a later step reached by sampling with the LoRA as it now is
            rng = self.t.rng(self.stage, i)
            b, dirs, idx, emb = draw(rng)
            speed = rng.uniform(*cfg.get("speed", world.SPEED), size=b)
            off = np.stack([track_offsets(*fam["place"][j].tolist(), v, DIRECTIONS[d])
                            for d, j, v in zip(dirs, idx, speed)]) / (world.SIZE / 8)
            select(self.loras, torch.as_tensor(dirs))
            if rng.random() < cfg["first_step_share"]:
                xt, t, x0 = noise0[idx], first_t, shift_latents(fam["first"][idx], off)
            else:
                (xt, t), x0 = rollout(rng, idx, emb), shift_latents(fam["final"][idx], off)
            a = alphas[t]
            v = unet(xt, torch.tensor(t), encoder_hidden_states=emb).sample
            return clip_loss(a.sqrt() * xt - (1 - a).sqrt() * v, x0, cfg["temporal_weight"])

        def loss_of(pred, x0):
            if not cfg.get("pixel_loss"):
                return clip_loss(pred, x0, cfg["temporal_weight"])
            # in pixels: where the LoRA is unsure, an average of latents decodes to other colours
            # (red and black to green), an average of pictures stays a dim red
            with torch.no_grad():
                want = decode(x0)
            return clip_loss(decode(pred), want, cfg["temporal_weight"])

        def decode(z):  # (B, C, F, h, w) latents -> (B, 3, F, H, W) pictures
            b, c, f, h, w = z.shape
            img = self.pipe.vae.decode(z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / self.scaling).sample
            return img.reshape(b, f, *img.shape[1:]).permute(0, 2, 1, 3, 4)

        steps = {"translated": translated, "on_policy": on_policy}
        self.dirs, self.stage = np.arange(len(DIRECTIONS)), STAGE
        secs = fit(self.t, self.loras, cfg["lr"], steps.get(cfg.get("objective"), step), self.probe)
        if cfg.get("focus"):  # a second stage on the directions that lag, from the first stage's factors
            f = cfg["focus"]
            self.dirs, self.stage = np.array([DIRECTIONS.index(d) for d in f["directions"]]), FOCUS
            train.STEPS[FOCUS] = f["steps"]
            secs += fit(self.t, self.loras, f["lr"], steps.get(cfg.get("objective"), step), self.probe, FOCUS)
        (self.t.work / STAGE).mkdir(exist_ok=True)
        from safetensors.torch import save_file

        if self.cfg["targets"] == "attention":  # AnimateDiff's layout; the wider set stays in the checkpoint
            for d, sd in state_dicts(self.loras).items():
                save_file(sd, self.t.work / STAGE / f"{d}.safetensors")
        info = {"seconds": round(secs, 1), "steps": cfg["steps"], "batch": cfg["batch"], "seed": cfg["seed"],
                "rank": cfg["rank"], "bank_clips": n, "objective": cfg.get("objective", "paired"), "targets": cfg["targets"],
                "shared_noise": self.share, "focus": cfg.get("focus")}
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
                hits, kept = 0, []
                for p in quality.MOTION_PROMPTS[:3]:
                    for s in (1, 2):
                        reads = _reads(self.render(p, s))
                        hits += quality.goes_the_right_way(quality.velocity(reads), f"moving {d}")
                        kept.append(quality.colour_kept(reads, p))
                out.append(f"{d} {hits}/6 colour {np.mean(kept):.0%}")
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
    last = work / f"{FOCUS}.ckpt.pt"
    state = torch.load(last if last.exists() else work / f"{STAGE}.ckpt.pt", weights_only=True)["lora"]
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
