"""Train the shapes-world model family: VAE, text encoder + UNet, motion adapter, ControlNet, LCM-LoRA.

    python training/shapes/train.py WORKDIR            # every stage, resuming where it stopped
    python training/shapes/train.py WORKDIR --stage unet
    python training/shapes/train.py WORKDIR --export   # fp16 weights into lcmvideo/data/shapes

The run's settings are a config file (configs/shipped.json: the shipped weights' run); the
architecture is the embedded family's own (lcmvideo.models.embedded), imported from there.

Deterministic under --seed: each step's batch and noise come from (seed, stage, step), so a
resumed stage continues exactly where it stopped. Checkpoints every CHECKPOINT_EVERY steps. Not run in CI.
All models are standard diffusers/transformers classes in SD1.5's structure.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root holds the training package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lcmvideo.models.embedded import CONTROLNET_EMBED, LORA_TARGETS, MOTION, TEXT, UNET, VAE  # noqa: E402
from lcmvideo.shapes import world  # noqa: E402

STAGES = ("vae", "unet", "motion", "controlnet", "lcm")
CONFIG = Path(__file__).parent / "configs" / "shipped.json"  # the shipped weights' run; --config for another
RUN = json.loads(CONFIG.read_text())
STEPS, BATCH, LR, BANK = RUN["steps"], RUN["batch"], RUN["lr"], RUN["bank"]  # per stage; motion batches clips
CHECKPOINT_EVERY = RUN["checkpoint_every"]  # steps
SHAPE_WEIGHT = RUN["shape_weight"]  # VAE loss weight of shape pixels over background ones
LORA_RANK = RUN["lora_rank"]
LCM_CONTROLLED = RUN["lcm_controlled"]  # share of LCM distillation samples that carry the ControlNet's residuals
GUIDANCE_W = tuple(RUN["guidance_w"])  # teacher CFG during distillation: cond + w (cond - uncond), scale = 1 + w
DDIM_STEPS = RUN["ddim_steps"]
# Sampling default shipped with the family (sampling.json): with half the noise common to all
# frames the trained adapter's frames hold together (3.1 px off a straight path vs 6-10 px); at
# 0.85 a 'still' clip stays put (median 2.4 px against 5.9 px at 0.5). Used only to sample.
SHARED_NOISE = RUN["shared_noise"]
# SD1.5's schedule keeps some signal at t = 999 (alpha_bar 0.0047): on 8x8 latents enough of the
# layout leaks into the noisiest training inputs that the models learn to take it from the starting
# noise (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"). Zero
# terminal SNR removes the leak and needs v-prediction; the exported scheduler config says so.
# Measured against SD1.5's schedule: the ControlNet places the shape within 6 px in 8/8 probe
# pictures instead of 6/8, the UNet gets every probe colour right by step 1000 instead of 1800.
SCHEDULE = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")


class Trainer:
    def __init__(self, work: Path, seed: int, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.work, self.seed = work, seed
        work.mkdir(parents=True, exist_ok=True)
        from lcmvideo.models.libraries import configure
        from lcmvideo.models.tokenizer import load_tokenizer
        from lcmvideo.paths import DATA

        configure()
        from diffusers import DDPMScheduler, LCMScheduler

        self.tokenizer = load_tokenizer()
        sd15 = LCMScheduler.from_pretrained(DATA / "sd15", subfolder="scheduler").config
        self.noise = DDPMScheduler.from_config(sd15, **SCHEDULE)  # as kwargs: a merged dict loses defaults
        self._ids: dict = {}

    # ------------------------------------------------------------ plumbing
    def rng(self, stage: str, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STAGES.index(stage) if stage in STAGES else 99, step])

    def gen(self, stage: str, step: int):
        import torch

        return torch.Generator().manual_seed(int(self.rng(stage, step).integers(2**62)))

    def log(self, stage: str, text: str):
        print(f"[{stage}] {text}", flush=True)
        with open(self.work / f"{stage}.log", "a") as f:
            f.write(text + "\n")

    def ids(self, captions: list[str]):
        import torch

        missing = [c for c in dict.fromkeys(captions) if c not in self._ids]
        if missing:
            enc = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True).input_ids
            self._ids.update(zip(missing, enc))
        return torch.tensor([self._ids[c] for c in captions])

    def loop(self, stage: str, params: list, step_fn, models: dict, probe=None):
        """Run `step_fn(step) -> loss` for the stage's steps with AdamW, warmup + cosine, checkpoints;
        `probe() -> str`, if given, is logged at each checkpoint (how the stage is doing by its own measure)."""
        import torch

        ckpt = self.work / f"{stage}.ckpt.pt"
        opt = torch.optim.AdamW(params, weight_decay=0.01)
        total = STEPS[stage]
        start, before = 0, 0.0  # seconds spent before a resume, so `done` records the stage's whole time
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)
            for name, m in models.items():
                m.load_state_dict(state[name])
            opt.load_state_dict(state["opt"])
            for g, want in zip(opt.param_groups, params):  # learning rates come from the code, not the file
                g["base_lr"] = want["base_lr"]
            start, before = state["step"], float(state.get("seconds", 0.0))
            self.log(stage, f"resumed at step {start}")
        t0, losses = time.perf_counter(), []
        t_log = t0
        for step in range(start, total):
            frac = step / total
            scale = min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for grp in opt.param_groups:
                grp["lr"] = grp["base_lr"] * scale
            loss = step_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            losses.append(loss.item())
            if (step + 1) % 50 == 0:
                self.log(stage, f"step {step + 1}/{total} loss {np.mean(losses):.4f} "
                                f"({(time.perf_counter() - t_log) / len(losses):.2f} s/step)")
                losses, t_log = [], time.perf_counter()
            if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == total:
                state = {name: m.state_dict() for name, m in models.items()}
                state.update(opt=opt.state_dict(), step=step + 1, seconds=before + time.perf_counter() - t0)
                torch.save(state, ckpt.with_suffix(".tmp"))
                ckpt.with_suffix(".tmp").replace(ckpt)
                if probe is not None:
                    self.log(stage, f"step {step + 1} probe: {probe()}")
        return before + time.perf_counter() - t0

    def groups(self, *pairs):
        return [{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr, "base_lr": lr} for m, lr in pairs]

    def done(self, stage: str) -> bool:
        return (self.work / stage / "done").exists()

    def finish(self, stage: str, seconds: float, extra: dict | None = None):
        info = {"seconds": round(seconds, 1), "steps": STEPS[stage], "batch": BATCH[stage], "seed": self.seed,
                **(extra or {})}
        (self.work / stage / "done").write_text(json.dumps(info))
        self.log(stage, f"done: {info}")

    # ------------------------------------------------------------ data
    def images(self, n: int, rng) -> tuple[list, np.ndarray]:
        scenes = [world.sample(rng) for _ in range(n)]
        return scenes, np.stack([world.draw(s) for s in scenes])

    @staticmethod
    def to_tensor(frames: np.ndarray):
        import torch

        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def bank(self):
        """Latent means/stds of a fixed set of images and clips, encoded once by the trained VAE."""
        import torch
        from safetensors.torch import load_file, save_file

        path = self.work / "bank.safetensors"
        if path.exists():
            out = dict(load_file(path))
            out.update(json.loads(path.with_suffix(".json").read_text()))
            return out
        vae = self.vae()
        rng = np.random.default_rng([self.seed, 1234])
        out = {"scenes": [], "clips": []}

        def enc(frames):
            with torch.no_grad():
                d = vae.encode(self.to_tensor(frames)).latent_dist
            return d.mean.half(), d.std.half()

        means, stds = [], []
        for _ in range(0, BANK["images"], 256):
            scenes, frames = self.images(256, rng)
            out["scenes"] += [vars(s) for s in scenes]
            m, s = enc(frames)
            means.append(m), stds.append(s)
        out["image_mean"], out["image_std"] = torch.cat(means), torch.cat(stds)
        means, stds = [], []
        for _ in range(BANK["clips"]):
            s = world.sample(rng, world.FRAMES)
            out["clips"].append(vars(s))
            m, sd = enc(world.clip(s))
            means.append(m), stds.append(sd)
        out["clip_mean"], out["clip_std"] = torch.stack(means), torch.stack(stds)
        save_file({k: v.contiguous() for k, v in out.items() if k.endswith(("_mean", "_std"))}, path.with_suffix(".tmp"))
        path.with_suffix(".json").write_text(json.dumps({"scenes": out["scenes"], "clips": out["clips"]}))
        path.with_suffix(".tmp").replace(path)
        return out

    def sample_latents(self, mean, std, g):
        import torch

        return (mean.float() + std.float() * torch.randn(mean.shape, generator=g)) * self.scaling

    # ------------------------------------------------------------ stages
    def stage_vae(self):
        import torch
        from diffusers import AutoencoderKL

        torch.manual_seed(self.seed)
        vae = AutoencoderKL(**VAE)

        def step(i):
            rng, g = self.rng("vae", i), self.gen("vae", i)
            _, frames = self.images(BATCH["vae"], rng)
            x = self.to_tensor(frames)
            d = vae.encode(x).latent_dist
            z = d.mean + d.std * torch.randn(d.mean.shape, generator=g)
            y = vae.decode(z).sample
            kl = d.kl().mean() / z[0].numel()
            # the shape is ~6 % of the picture: unweighted, the loss is nearly all background and
            # hues come back wrong (blue decoded as green); weighted, the shape counts ~40 %
            w = 1.0 + SHAPE_WEIGHT * ((x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.1).float()
            return (w * ((y - x).abs() + (y - x) ** 2)).mean() / w.mean() + 1e-4 * kl

        secs = self.loop("vae", self.groups((vae, LR["vae"])), step, {"vae": vae})
        with torch.no_grad():
            _, frames = self.images(512, np.random.default_rng([self.seed, 7]))
            z = vae.encode(self.to_tensor(frames)).latent_dist.mean
            err = (vae.decode(z).sample - self.to_tensor(frames)).abs().mean().item() * 127.5
            # each palette colour on each background, read back by the analyser the tests use
            pure = [world.Scene("circle", c, b, 32, 32, 9) for c in world.COLOURS for b in world.BACKGROUNDS]
            back = vae.decode(vae.encode(self.to_tensor(np.stack([world.draw(p) for p in pure]))).latent_dist.mean).sample
            back = ((back.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
            from lcmvideo.shapes import analyse

            hues = sum(analyse.read(f).colour == p.colour for f, p in zip(back, pure))
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        vae.save_pretrained(self.work / "vae")
        self.finish("vae", secs, {"scaling_factor": float(1.0 / z.std()), "reconstruction_l1_of_255": round(err, 2),
                                  "colours_read_back": f"{hues}/{len(pure)}"})

    def vae(self):
        """The trained VAE, loaded once (every probe decodes with it)."""
        if getattr(self, "_vae", None) is None:
            from diffusers import AutoencoderKL

            self._vae = AutoencoderKL.from_pretrained(self.work / "vae").eval().requires_grad_(False)
            self.scaling = self._vae.config.scaling_factor
        return self._vae

    def controlnet(self):
        """The trained ControlNet, frozen (the LCM stage distils with it)."""
        from diffusers import ControlNetModel

        return ControlNetModel.from_pretrained(self.work / "controlnet" / "controlnet").eval().requires_grad_(False)

    def image_pipeline(self, te, unet, scheduler_cls):
        """A StableDiffusionPipeline over the models being trained, for the probes."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=self.vae(), text_encoder=te, tokenizer=self.tokenizer, unet=unet,
                                       scheduler=scheduler_cls.from_config(self.noise.config), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def text_and_unet(self):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        te = CLIPTextModel.from_pretrained(self.work / "unet" / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(self.work / "unet" / "unet")
        return te, unet

    def stage_unet(self):
        import torch
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        bank = self.bank()
        self.vae()
        torch.manual_seed(self.seed + 1)
        unet = UNet2DConditionModel(**UNET)
        te = CLIPTextModel(CLIPTextConfig(**TEXT))
        n = len(bank["scenes"])

        def step(i):
            rng, g = self.rng("unet", i), self.gen("unet", i)
            idx = rng.integers(n, size=BATCH["unet"])
            caps = [self.caption(world.Scene(**bank["scenes"][j]), rng) for j in idx]
            x0 = self.sample_latents(bank["image_mean"][idx], bank["image_std"][idx], g)
            return self.denoise_loss(unet, te(self.ids(caps))[0], x0, g)

        secs = self.loop("unet", self.groups((unet, LR["unet"]), (te, LR["unet"] * 2.5)), step, {"unet": unet, "te": te},
                         probe=lambda: self.colour_probe(te, unet))
        unet.save_pretrained(self.work / "unet" / "unet")
        te.save_pretrained(self.work / "unet" / "text_encoder")
        self.finish("unet", secs)

    def colour_probe(self, te, unet) -> str:
        """Share of 'a <colour> <shape>' pictures (20 DDIM steps, guidance 2.5) whose shape has that colour."""
        from diffusers import DDIMScheduler

        from training.shapes import quality

        pipe = self.image_pipeline(te, unet, DDIMScheduler)
        cases = quality.prompts_and_truth(seeds_per_prompt=1)
        te.eval(), unet.eval()
        try:
            out = quality.generate(pipe, [p for p, _, _ in cases], [s for _, _, s in cases], 20, quality.TEACHER_GUIDANCE)
        finally:
            te.train(), unet.train()
        return f"colour {quality.colour_rate(out, [c for _, c, _ in cases]):.2f}"

    def caption(self, scene, rng, motion: bool = False) -> str:
        if rng.random() < 0.1:
            return ""  # unconditional, for classifier-free guidance
        if not motion:  # a still picture says nothing about motion; any motion word may come with it
            scene = world.Scene(**{**vars(scene), "motion": list(world.MOTIONS)[rng.integers(len(world.MOTIONS))]})
            return world.caption(scene, rng, motion=rng.random() < 0.3)
        return world.caption(scene, rng)

    def target(self, x0, noise, t):
        """What the UNet learns to predict: the noise, or v = alpha noise - sigma x0."""
        if self.noise.config.prediction_type == "v_prediction":
            return self.noise.get_velocity(x0, noise, t)
        return noise

    def denoise_loss(self, unet, emb, x0, g, **kw):
        import torch

        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (x0.shape[0],), generator=g)
        xt = self.noise.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=emb, **kw).sample
        return torch.nn.functional.mse_loss(pred, self.target(x0, noise, t))

    def stage_motion(self):
        """The motion adapter on clips over the frozen image UNet, its output projections zero-initialised
        (as AnimateDiff trains it): the adapter starts as the identity and the image model stays the one
        the ControlNet and the LCM-LoRA are trained on."""
        import torch
        from diffusers import MotionAdapter, UNetMotionModel

        bank = self.bank()
        self.vae()
        te, unet = self.text_and_unet()
        te.requires_grad_(False)
        torch.manual_seed(self.seed + 2)
        adapter = MotionAdapter(**MOTION)
        for name, mod in adapter.named_modules():
            if name.endswith("proj_out"):
                torch.nn.init.zeros_(mod.weight), torch.nn.init.zeros_(mod.bias)
        model = UNetMotionModel.from_unet2d(unet, adapter)
        model.freeze_unet2d_params()
        motion = [p for n, p in model.named_parameters() if "motion_modules" in n]
        n, frames = len(bank["clips"]), world.FRAMES

        def step(i):
            rng, g = self.rng("motion", i), self.gen("motion", i)
            idx = rng.integers(n, size=BATCH["motion"])
            caps = [self.caption(world.Scene(**bank["clips"][j]), rng, motion=True) for j in idx]
            x0 = self.sample_latents(bank["clip_mean"][idx], bank["clip_std"][idx], g)  # (B, F, C, h, w)
            x0 = x0.permute(0, 2, 1, 3, 4)
            with torch.no_grad():
                emb = te(self.ids(caps))[0].repeat_interleave(frames, dim=0)  # one per frame, as the pipeline does
            return self.denoise_loss(model, emb, x0, g)

        groups = [{"params": motion, "lr": LR["motion"], "base_lr": LR["motion"]}]
        secs = self.loop("motion", groups, step, {"model": model}, probe=lambda: self.motion_probe(te, model))
        own = model.state_dict()
        adapter.load_state_dict({k: v for k, v in own.items() if "motion_modules" in k})
        adapter.save_pretrained(self.work / "motion" / "motion_adapter")
        self.finish("motion", secs)

    def motion_probe(self, te, model) -> str:
        """Whether each motion word moves a white square its way (2 seeds, 10 DDIM steps, guidance 2.5,
        the shipped share of common noise), with the fitted speeds in px/frame."""
        from diffusers import AnimateDiffPipeline, DDIMScheduler

        from lcmvideo.shapes import analyse
        from training.shapes import quality

        pipe = AnimateDiffPipeline(vae=self.vae(), text_encoder=te, tokenizer=self.tokenizer, unet=model,
                                   motion_adapter=None, scheduler=DDIMScheduler.from_config(self.noise.config))
        pipe.set_progress_bar_config(disable=True)
        model.eval()
        try:
            hits, speeds = 0, {}
            for motion in world.MOTIONS:
                for seed in (1, 2):
                    frames = quality.generate_clip(pipe, f"a white square, {motion}", seed, 10,
                                                   quality.TEACHER_GUIDANCE, shared_noise=SHARED_NOISE)
                    v = quality.velocity(analyse.read_clip(frames))
                    hits += quality.goes_the_right_way(v, motion)
                    speeds.setdefault(motion.split()[-1], []).append(v and (round(v[0], 1), round(v[1], 1)))
        finally:
            model.train()
        return f"direction right {hits}/{2 * len(world.MOTIONS)}, px/frame {speeds}"

    def stage_controlnet(self):
        import torch
        from diffusers import ControlNetModel

        bank = self.bank()
        self.vae()
        te, unet = self.text_and_unet()
        te.requires_grad_(False), unet.requires_grad_(False)
        torch.manual_seed(self.seed + 3)
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBED)
        n = len(bank["scenes"])

        def step(i):
            rng, g = self.rng("controlnet", i), self.gen("controlnet", i)
            idx = rng.integers(n, size=BATCH["controlnet"])
            scenes = [world.Scene(**bank["scenes"][j]) for j in idx]
            caps = ["" if rng.random() < 0.3 else self.caption(s, rng) for s in scenes]
            cond = position_cond([(s.x, s.y) for s in scenes])
            x0 = self.sample_latents(bank["image_mean"][idx], bank["image_std"][idx], g)
            with torch.no_grad():
                emb = te(self.ids(caps))[0]
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, self.noise.config.num_train_timesteps, (x0.shape[0],), generator=g)
            xt = self.noise.add_noise(x0, noise, t)
            down, mid = cn(xt, t, encoder_hidden_states=emb, controlnet_cond=cond, return_dict=False)
            pred = unet(xt, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
            return torch.nn.functional.mse_loss(pred, self.target(x0, noise, t))

        secs = self.loop("controlnet", self.groups((cn, LR["controlnet"])), step, {"cn": cn},
                         probe=lambda: self.controlnet_probe(te, unet, cn))
        cn.save_pretrained(self.work / "controlnet" / "controlnet")
        self.finish("controlnet", secs)

    def stage_lcm(self):
        """Latent consistency distillation of a LoRA (Luo et al. 2023, LCM-LoRA), DDIM solver, CFG teacher."""
        import torch
        from peft import LoraConfig

        bank = self.bank()
        self.vae()
        te, unet = self.text_and_unet()
        te.requires_grad_(False), unet.requires_grad_(False)
        cn = self.controlnet()
        torch.manual_seed(self.seed + 4)
        unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS,
                                    init_lora_weights="gaussian"))
        ac = self.noise.alphas_cumprod
        alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
        topk = self.noise.config.num_train_timesteps // DDIM_STEPS
        ddim_t = torch.arange(1, DDIM_STEPS + 1) * topk - 1
        ac_prev = torch.cat([ac[:1], ac[ddim_t[:-1]]])
        with torch.no_grad():
            uncond1 = te(self.ids([""]))[0]
        n = len(bank["scenes"])

        def view(v, x):
            return v.view(-1, *([1] * (x.ndim - 1)))

        v_pred = self.noise.config.prediction_type == "v_prediction"

        def x0_of(out, t, x):
            if v_pred:
                return view(alpha[t], x) * x - view(sigma[t], x) * out
            return (x - view(sigma[t], x) * out) / view(alpha[t], x)

        def eps_of(out, t, x):
            return view(alpha[t], x) * out + view(sigma[t], x) * x if v_pred else out

        def step(i):
            rng, g = self.rng("lcm", i), self.gen("lcm", i)
            b = BATCH["lcm"]
            idx = rng.integers(n, size=b)
            caps = [self.caption(world.Scene(**bank["scenes"][j]), rng) for j in idx]
            x0 = self.sample_latents(bank["image_mean"][idx], bank["image_std"][idx], g)
            with torch.no_grad():
                emb = te(self.ids(caps))[0]
            uncond = uncond1.expand(b, -1, -1)
            index = torch.randint(0, DDIM_STEPS, (b,), generator=g)
            start = ddim_t[index]
            prev = (start - topk).clamp(min=0)
            c_skip0, c_out0 = scalings(start)
            c_skip, c_out = scalings(prev)
            noise = torch.randn(x0.shape, generator=g)
            xt = self.noise.add_noise(x0, noise, start)
            w = view(torch.rand(b, generator=g) * (GUIDANCE_W[1] - GUIDANCE_W[0]) + GUIDANCE_W[0], xt)
            # Part of each batch is conditioned on its position map, student and teacher alike: the LoRA
            # shifts the UNet's features far enough on 8x8 latents that, distilled without it, the shipped
            # ControlNet placed 8/20 shapes at 4 LCM steps against 18/20 for the teacher.
            controlled = torch.rand(b, generator=g) < LCM_CONTROLLED
            cond = position_cond([(bank["scenes"][j]["x"], bank["scenes"][j]["y"]) for j in idx])

            def net(x, t, e):
                with torch.no_grad():
                    down, mid = cn(x, t, encoder_hidden_states=e, controlnet_cond=cond, return_dict=False)
                m = view(controlled.float(), x)
                return unet(x, t, encoder_hidden_states=e, down_block_additional_residuals=[d * m for d in down],
                            mid_block_additional_residual=mid * m).sample

            eps = net(xt, start, emb)
            pred = view(c_skip0, xt) * xt + view(c_out0, xt) * x0_of(eps, start, xt)
            with torch.no_grad():
                unet.disable_adapters()
                e_c = net(xt, start, emb)
                e_u = net(xt, start, uncond)
                unet.enable_adapters()
                x0_c, x0_u = x0_of(e_c, start, xt), x0_of(e_u, start, xt)
                x0_g = x0_c + w * (x0_c - x0_u)
                e_c, e_u = eps_of(e_c, start, xt), eps_of(e_u, start, xt)
                e_g = e_c + w * (e_c - e_u)
                a_prev = view(ac_prev[index], xt)
                x_prev = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * e_g
                e_t = net(x_prev, prev, emb)
                target = view(c_skip, xt) * x_prev + view(c_out, xt) * x0_of(e_t, prev, x_prev)
            c = 1e-3
            return (torch.sqrt((pred - target) ** 2 + c * c) - c).mean()

        lora = [p for n_, p in unet.named_parameters() if "lora_" in n_]
        for p in lora:
            p.requires_grad_(True)
        groups = [{"params": lora, "lr": LR["lcm"], "base_lr": LR["lcm"]}]
        def probe():
            return f"{self.lcm_probe(te, unet)}; ControlNet {self.controlnet_probe(te, unet, cn, lcm=True)}"

        secs = self.loop("lcm", groups, step, {"unet": unet}, probe=probe)
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        (self.work / "lcm").mkdir(exist_ok=True)
        save_file(to_kohya({k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}),
                  self.work / "lcm" / "pytorch_lora_weights.safetensors")
        self.finish("lcm", secs)

    def controlnet_probe(self, te, unet, cn, lcm: bool = False) -> str:
        """Share of pictures whose shape lands within 6 px of the map's blob: 20 DDIM steps at guidance 2.5,
        or with `lcm` 4 LCM steps at guidance 1 (the LoRA must be active in `unet`)."""
        import torch
        from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionControlNetPipeline

        from lcmvideo.shapes import analyse
        from training.shapes import quality

        sched, steps, guidance = (LCMScheduler, 4, 1.0) if lcm else (DDIMScheduler, 20, quality.TEACHER_GUIDANCE)
        pipe = StableDiffusionControlNetPipeline(
            vae=self.vae(), text_encoder=te, tokenizer=self.tokenizer, unet=unet, controlnet=cn,
            scheduler=sched.from_config(self.noise.config), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        points = [(14, 14), (50, 14), (32, 32), (14, 50), (50, 50), (20, 44), (44, 22), (30, 50)]
        maps = [position_cond([p]) for p in points]
        was_training = cn.training
        cn.eval()
        try:
            near = []
            for k, ((x, y), m) in enumerate(zip(points, maps)):
                with torch.inference_mode():
                    out = pipe(prompt=f"a {list(world.COLOURS)[k % len(world.COLOURS)]} circle", image=m,
                               num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                               generator=torch.Generator().manual_seed(k)).images[0]
                r = analyse.read((out * 255).round().astype(np.uint8))
                near.append(bool(np.hypot(r.x - x, r.y - y) <= quality.TOLERANCE_PX))
        finally:
            cn.train(was_training)
        return f"placed within {quality.TOLERANCE_PX:g} px {np.mean(near):.2f}"

    def lcm_probe(self, te, unet) -> str:
        """4-step LCM against the 50-step DDIM teacher (guidance 2.5) from the same noise."""
        from diffusers import DDIMScheduler, LCMScheduler

        from training.shapes import quality

        cases = quality.prompts_and_truth(seeds_per_prompt=1)
        prompts, seeds, colours = [p for p, _, _ in cases], [s for _, _, s in cases], [c for _, c, _ in cases]
        unet.eval()
        try:
            if getattr(self, "_teacher50", None) is None:
                unet.disable_adapters()
                self._teacher50 = quality.generate(self.image_pipeline(te, unet, DDIMScheduler), prompts, seeds,
                                                   50, quality.TEACHER_GUIDANCE)
                unet.enable_adapters()
            lcm4 = quality.generate(self.image_pipeline(te, unet, LCMScheduler), prompts, seeds, 4, 1.0)
        finally:
            unet.train()
        return (f"colour {quality.colour_rate(lcm4, colours):.2f}, agrees with the teacher "
                f"{quality.agreement(lcm4, self._teacher50):.2f}")

    # ------------------------------------------------------------ export
    def export(self, dest: Path):
        """fp16 copies of the final weights in diffusers layout, as the embedded default ships them."""
        import torch
        from diffusers import AutoencoderKL, ControlNetModel, LCMScheduler, MotionAdapter, UNet2DConditionModel
        from safetensors.torch import load_file, save_file
        from transformers import CLIPTextModel

        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for cls, src, name in ((AutoencoderKL, self.work / "vae", "vae"),
                               (UNet2DConditionModel, self.work / "unet" / "unet", "unet"),
                               (CLIPTextModel, self.work / "unet" / "text_encoder", "text_encoder"),
                               (MotionAdapter, self.work / "motion" / "motion_adapter", "motion_adapter"),
                               (ControlNetModel, self.work / "controlnet" / "controlnet", "controlnet")):
            cls.from_pretrained(src).to(torch.float16).save_pretrained(tmp / name)
            cfg = tmp / name / "config.json"  # diffusers records the training folder's path: not ours to ship
            cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items() if k != "_name_or_path"},
                                      indent=2, sort_keys=True) + "\n")
        (tmp / "lcm_lora").mkdir()
        lora = load_file(self.work / "lcm" / "pytorch_lora_weights.safetensors")
        save_file({k: v.half() for k, v in lora.items()}, tmp / "lcm_lora" / "pytorch_lora_weights.safetensors")
        LCMScheduler.from_config(self.noise.config).save_pretrained(tmp / "scheduler")
        (tmp / "sampling.json").write_text(json.dumps({"shared_noise": SHARED_NOISE}))
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
            "scheduler": ["diffusers", "LCMScheduler"],
            "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False,
        }, indent=2))
        (tmp / "README.md").write_text(
            "lcmvideo's embedded default: the shapes-world family (training/shapes/train.py), fp16.\n"
            "The tokenizer is the real CLIP tokenizer, shipped once in lcmvideo/data/clip "
            "(lcmvideo.models.tokenizer.load_tokenizer()).\n")
        record = {s: json.loads((self.work / s / "done").read_text()) for s in STAGES}
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.replace(dest)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        print(f"exported to {dest}: {size / 1e6:.1f} MB")


def position_cond(points):
    """The ControlNet's conditioning for shapes at `points` (x, y): (N, 3, 64, 64) position maps in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack([world.position_map(x, y) for x, y in points])).permute(0, 3, 1, 2).float() / 255.0


def scalings(t, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """LCM's boundary-condition scalings c_skip, c_out (as LCMScheduler applies them at sampling)."""
    s = timestep_scaling * t.float()
    return sigma_data**2 / (s**2 + sigma_data**2), s / (s**2 + sigma_data**2) ** 0.5


def to_kohya(peft_sd: dict) -> dict:
    """peft keys (`down_blocks.0...to_q.lora_A.weight`) -> lcm-lora-sdv1-5's layout
    (`lora_unet_down_blocks_0_..._to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`)."""
    import torch

    out = {}
    for k, v in peft_sd.items():
        module, ab = k.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        if ab.startswith("A"):
            out[f"{name}.lora_down.weight"] = v
            out[f"{name}.alpha"] = torch.tensor(float(v.shape[0]))
        else:
            out[f"{name}.lora_up.weight"] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--stage", choices=STAGES + ("all",), default="all")
    ap.add_argument("--config", type=Path, default=CONFIG, help="the run's settings (JSON like configs/shipped.json)")
    ap.add_argument("--seed", type=int, help="[default: the config's]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a few steps of each stage, to check the code")
    ap.add_argument("--export", type=Path, nargs="?",
                    const=Path(__file__).resolve().parents[2] / "lcmvideo" / "data" / "shapes")
    a = ap.parse_args(argv)
    if a.config != CONFIG:
        run = json.loads(a.config.read_text())
        for table, key in ((STEPS, "steps"), (BATCH, "batch"), (LR, "lr"), (BANK, "bank")):
            table.update(run.get(key, {}))
    seed = a.seed if a.seed is not None else RUN["seed"]
    if a.smoke:
        STEPS.update({k: 3 for k in STEPS})
        BANK.update(images=256, clips=4)
    t = Trainer(a.work, seed, a.threads)
    if a.export:
        t.export(a.export)
        return
    for stage in STAGES if a.stage == "all" else (a.stage,):
        if t.done(stage) and a.stage == "all":
            continue
        (a.work / stage).mkdir(parents=True, exist_ok=True)
        getattr(t, f"stage_{stage}")()


if __name__ == "__main__":
    main()
