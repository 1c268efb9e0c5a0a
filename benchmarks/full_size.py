"""lcmvideo against a plain diffusers script at full SD1.5 size, on the files users download.

Makes random-weight files in the real layouts once (with the test exporters): an SD1.5 LDM single
file in fp16 (as civitai ships, 2.1 GB), mm_sd_v15_v2.ckpt in fp32 (1.8 GB), and a kohya-layout
LCM-LoRA of rank 64. Then runs, as whole processes and alternating, `lcmvideo render` and a plain
diffusers script (from_single_file, load_lora_weights + fuse_lora, AnimateDiffPipeline with
LCMScheduler) on the same job, and prints load, denoise and decode seconds and peak RSS
(`/usr/bin/time -v`) side by side with the ratios.

    python benchmarks/full_size.py                          # 8 frames 128x128, 2 steps: minutes on 2 cores
    python benchmarks/full_size.py --size 512 --frames 16 --steps 1   # the memory goal: ~12 min a side on 2 cores
    python benchmarks/full_size.py --quick                  # the embedded family's files instead: seconds
    python benchmarks/full_size.py --sparsectrl             # also lcmvideo with a SparseCtrl RGB file and --init-image
Files go to --work (default: $TMPDIR/lcmvideo-full-size), kept for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test exporters (layouts.py)

PLAIN = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from diffusers import AnimateDiffPipeline, LCMScheduler, MotionAdapter
base, motion, lora, config, motion_config, frames, size, steps, out, device, dtype = sys.argv[1:12]
dtype = getattr(torch, dtype)
torch.set_grad_enabled(False)
adapter = MotionAdapter.from_single_file(motion, config=motion_config, local_files_only=True, torch_dtype=dtype)
pipe = AnimateDiffPipeline.from_single_file(base, motion_adapter=adapter, config=config, local_files_only=True,
                                            torch_dtype=dtype)
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, beta_schedule="scaled_linear")
pipe.load_lora_weights(lora, adapter_name="lcm")
pipe.fuse_lora()
pipe.unload_lora_weights()
pipe.to(device)
pipe.set_progress_bar_config(disable=True)
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
sync()
t1 = time.perf_counter()
latents = pipe(prompt="a red circle", num_frames=int(frames), height=int(size), width=int(size),
               num_inference_steps=int(steps), guidance_scale=1.0, generator=torch.Generator().manual_seed(1),
               output_type="latent").frames
sync()
t2 = time.perf_counter()
video = pipe.decode_latents(latents, decode_chunk_size=16)
sync()
t3 = time.perf_counter()
vram = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
json.dump({"load": t1 - t0, "denoise": t2 - t1, "decode": t3 - t2, "vram": vram}, open(out, "w"))
'''


def pipeline_config(components: Path, out: Path) -> Path:
    """A local AnimateDiffPipeline config folder, so that from_single_file needs no hub."""
    import shutil

    from lcmvideo.models.tokenizer import tokenizer_dir

    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        shutil.copytree(components / sub, out / sub, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    shutil.copytree(tokenizer_dir(), out / "tokenizer", dirs_exist_ok=True)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "AnimateDiffPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "motion_adapter": ["diffusers", "MotionAdapter"],
        "scheduler": ["diffusers", "LCMScheduler"], "feature_extractor": [None, None], "image_encoder": [None, None]}))
    return out


def make_files(work: Path, quick: bool) -> dict:
    """The model files in their download layouts (written once; `quick`: the embedded family's)."""
    import layouts
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lcmvideo.models import embedded
    from lcmvideo.models.loader import SD15_CONFIG

    work.mkdir(parents=True, exist_ok=True)
    files = {"base": work / "base-ldm-fp16.safetensors", "motion": work / "mm_v2.ckpt",
             "lora": work / "lcm-lora-kohya.safetensors"}
    files["config"], files["motion_config"] = work / "pipeline_config", work / "motion_config"
    pipeline_config(embedded.ensure() if quick else SD15_CONFIG, files["config"])
    with torch.device("meta"):  # the motion module's config, for the plain script's from_single_file
        (MotionAdapter.from_pretrained(embedded.ensure() / "motion_adapter") if quick else MotionAdapter()).save_config(
            files["motion_config"])
    if all(files[k].exists() for k in ("base", "motion", "lora")):
        return files
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if quick:
        d = embedded.ensure()
        unet = UNet2DConditionModel.from_pretrained(d / "unet")
        vae = AutoencoderKL.from_pretrained(d / "vae")
        te = CLIPTextModel.from_pretrained(d / "text_encoder")
        adapter = MotionAdapter.from_pretrained(d / "motion_adapter")
    else:
        unet = UNet2DConditionModel.from_config(json.loads((SD15_CONFIG / "unet/config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((SD15_CONFIG / "vae/config.json").read_text()))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG / "text_encoder"))
        adapter = MotionAdapter()  # the defaults are mm_sd_v15_v2's
    sd = {k: v.half() for k, v in layouts.to_ldm_checkpoint(unet, vae, te).items()}
    layouts.save_weights(sd, files["base"])
    del sd
    layouts.write_animatediff_original(adapter, files["motion"], "v2")
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
    rank = 4 if quick else 64  # lcm-lora-sdv1-5's rank
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.01)
    peft_sd = {f"unet.{k}": v.half() for k, v in get_peft_model_state_dict(unet).items()}
    layouts.save_weights(layouts.to_kohya_lora(peft_sd), files["lora"])
    print(f"wrote the model files to {work} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return files


def make_sparsectrl(work: Path, quick: bool) -> list[str]:
    """A random SparseCtrl RGB file over the base UNet in AnimateDiff's original layout (fp16, as
    v3_sd15_sparsectrl_rgb.ckpt's tensors) and an init picture: lcmvideo's extra arguments."""
    import layouts
    import torch
    from diffusers import SparseControlNetModel
    from PIL import Image

    from lcmvideo.models import embedded
    from lcmvideo.models.loader import SD15_CONFIG, sparsectrl_config

    path, picture = work / "sparsectrl_rgb.ckpt", work / "init.png"
    if not path.exists():
        unet = json.loads(((embedded.ensure() if quick else SD15_CONFIG) / "unet/config.json").read_text())
        torch.manual_seed(0)
        net = SparseControlNetModel(**sparsectrl_config(unet)).half()
        layouts.write_sparsectrl(net, path)
    if not picture.exists():
        pic = np.zeros((512, 512, 3), np.uint8)
        pic[160:352, 160:352] = (220, 40, 40)
        Image.fromarray(pic).save(picture)
    return ["--sparsectrl", str(path), "--init-image", str(picture)]


def peak_rss_gb(stderr: str) -> float:
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return kb / 1024**2


def run_lcmvideo(files: dict, a, out: Path, extra: tuple = ()) -> dict:
    clip = out / "lcmvideo.mp4"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "lcmvideo", "-q", "render", "-p", "a red circle",
           "--model", str(files["base"]), "--motion", str(files["motion"]), "--lcm-lora", str(files["lora"]),
           "--frames", str(a.frames), "-W", str(a.size), "-H", str(a.size), "--steps", str(a.steps), "--seed", "1",
           "--device", a.device, "--dtype", a.dtype, "-o", str(clip), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"lcmvideo failed:\n{r.stderr[-3000:]}")
    t = json.loads((out / "lcmvideo.mp4.json").read_text())["timing_s"]
    # load = everything but the work itself: imports and reading the files, as on the plain side (and
    # here also writing the MP4, a fraction of a second)
    return {"wall": wall, "rss": peak_rss_gb(r.stderr), "load": wall - t["denoise"] - t["decode"],
            "denoise": t["denoise"], "decode": t["decode"], "vram": t.get("peak_vram_gb")}


def run_plain(files: dict, a, out: Path) -> dict:
    script = out / "plain.py"
    script.write_text(PLAIN)
    res = out / "plain.json"
    cmd = ["/usr/bin/time", "-v", sys.executable, str(script), str(files["base"]), str(files["motion"]),
           str(files["lora"]), str(files["config"]), str(files["motion_config"]), str(a.frames), str(a.size),
           str(a.steps), str(res), a.device, a.dtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"the plain diffusers script failed:\n{r.stderr[-3000:]}")
    t = json.loads(res.read_text())
    return {"wall": wall, "rss": peak_rss_gb(r.stderr), "load": wall - t["denoise"] - t["decode"],
            "denoise": t["denoise"], "decode": t["decode"], "vram": t["vram"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="alternating runs of each side")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lcmvideo-full-size")
    ap.add_argument("--quick", action="store_true", help="the embedded family's files at 64x64: a smoke check")
    ap.add_argument("--only", choices=["lcmvideo", "diffusers"], help="run one side")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--sparsectrl", action="store_true", help="a third side: lcmvideo with SparseCtrl RGB")
    a = ap.parse_args()
    if a.quick:
        a.size, a.frames, a.work = 64, 4, a.work.with_name(a.work.name + "-quick")
    files = make_files(a.work, a.quick)
    sides = [("lcmvideo", run_lcmvideo), ("diffusers", run_plain)]
    if a.sparsectrl:
        extra = make_sparsectrl(a.work, a.quick)
        sides.append(("sparsectrl", lambda f, a, out: run_lcmvideo(f, a, out, extra)))
    rows = {side: [] for side, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.reps):
            for side, fn in sides:
                if a.only in (None, side, "lcmvideo" if side == "sparsectrl" else None):
                    rows[side].append(fn(files, a, Path(tmp)))
    best = {k: min(v, key=lambda r: r["wall"]) for k, v in rows.items() if v}
    print(f"{a.frames} frames {a.size}x{a.size}, {a.steps} steps, {a.device} {a.dtype}, {os.cpu_count()} cores; "
          f"files: {'embedded family' if a.quick else 'SD1.5 size, random weights'}")
    keys = [("wall", "whole process s"), ("load", "load s"), ("denoise", "denoise s"), ("decode", "decode s"),
            ("rss", "peak RSS GB")] + ([("vram", "peak VRAM GiB")] if a.device.startswith("cuda") else [])
    sp = "sparsectrl" in best  # lcmvideo with SparseCtrl RGB, and its ratio to lcmvideo without
    print(f"{'':<18}{'lcmvideo':>10}{'diffusers':>11}{'ratio':>8}" + (f"{'+SparseCtrl':>13}{'ratio':>8}" if sp else ""))
    for k, label in keys:
        lv, dv = best.get("lcmvideo", {}).get(k), best.get("diffusers", {}).get(k)
        ratio = f"{lv / dv:.2f}" if lv is not None and dv else "-"
        line = f"{label:<18}{lv if lv is not None else float('nan'):>10.2f}" \
               f"{dv if dv is not None else float('nan'):>11.2f}{ratio:>8}"
        if sp:
            sv = best["sparsectrl"].get(k)
            line += f"{sv if sv is not None else float('nan'):>13.2f}" + (f"{sv / lv:>8.2f}" if sv and lv else f"{'-':>8}")
        print(line)


if __name__ == "__main__":
    main()
