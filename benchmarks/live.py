"""Live mode where the loop is the limit: an unpaced source (a frame is there whenever one is asked for).

  1. loops      plain          read -> diffusers StableDiffusionImg2ImgPipeline (prompt per call) -> write
                streamdiff     StreamDiffusion's recipe without TensorRT: prompt embeddings cached, one
                               fixed noise tensor, components called directly, read -> ... -> write in turn
                lcmvideo       live.run: capture / inference / recording threads, newest frame wins
                All write an MP4. Ratios: lcmvideo's fps over the loop's, the loop's median latency over
                lcmvideo's (>= 1: lcmvideo is at least as fast, at most as late).
  2. browser    in-process     live.run, no recording
                socket         `lcmvideo live --serve` (its own process) with a client speaking the page's
                               protocol (JPEG frames, the next sent when one is answered, 1 or 2 in flight
                               by the page's rule; and always 2, always 1): round trip, grab to decoded
                chromium       the page itself in headless Chromium with a fake camera (when selenium,
                               chromium and chromedriver are there): its own fps and latency counters
  3. stream     live.run with img2img.StreamBatch (the denoising batch) against the sequential Stylizer,
                at 1-4 steps
  4. TAESD      live.run with the Stylizer's VAE swapped for diffusers' AutoencoderTiny (TAESD's
                architecture, random weights: time only) against the model's own VAE
Latency is frame read (or grabbed) to frame out. Everything runs in one process, alternating repeats.

    python benchmarks/live.py [--quick] [--frames 60] [--steps 2] [--size 64] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WARM = 3  # frames each measurement runs first and leaves out (first calls of a shape are slow)


def writer(path: Path, size: int):
    import imageio_ffmpeg

    w = imageio_ffmpeg.write_frames(str(path), (size, size), fps=8, codec="libx264", pix_fmt_out="yuv420p",
                                    macro_block_size=2, ffmpeg_log_level="error")
    w.send(None)
    return w


def plain(models, src, n, size, prompt, steps, strength, out):
    import torch
    from PIL import Image

    from lcmvideo.pipeline import img2img

    pipe = img2img.img2img_pipeline(models)
    total = img2img.schedule_length(pipe.scheduler, steps, strength)
    strength = min(1.0, steps / total + 1e-6)  # the pipeline runs int(total * strength) steps: make that `steps`
    w, lat = writer(out, size), []
    for i in range(n + WARM):
        if i == WARM:
            t0, lat = time.perf_counter(), []
        t = time.perf_counter()
        f = src.read()
        img = pipe(prompt=prompt, image=Image.fromarray(f), strength=strength, num_inference_steps=total,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        w.send(np.ascontiguousarray((img * 255).round().astype(np.uint8)))
        lat.append(1000 * (time.perf_counter() - t))
    w.close()
    return n / (time.perf_counter() - t0), lat


def streamdiff(models, src, n, size, prompt, steps, strength, out):
    """The StreamDiffusion recipe without its TensorRT/batching: everything per-clip precomputed."""
    import torch

    from lcmvideo.pipeline import img2img
    from lcmvideo.pipeline import text as prompts

    p = models.pipe
    unet, vae, sched = img2img.unet2d(models), p.vae, type(p.scheduler).from_config(p.scheduler.config)
    sched.set_timesteps(img2img.schedule_length(sched, steps, strength))
    ts = sched.timesteps[-steps:]
    with torch.inference_mode():
        emb = prompts.encode(p.text_encoder, p.tokenizer, prompt).to(unet.dtype)
    noise = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0)).to(unet.device,
                                                                                                   unet.dtype)
    sf = vae.config.scaling_factor
    w, lat = writer(out, size), []
    with torch.inference_mode():
        for i in range(n + WARM):
            if i == WARM:
                t0, lat = time.perf_counter(), []
            t = time.perf_counter()
            f = src.read()
            x = (torch.from_numpy(f).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1)
            z = sched.add_noise(vae.encode(x).latent_dist.mean * sf, noise, ts[:1])
            sched.set_timesteps(len(sched.timesteps))
            for k in ts:
                z = sched.step(unet(z, k, encoder_hidden_states=emb).sample, k, z).prev_sample
            img = vae.decode(z / sf).sample
            w.send(np.ascontiguousarray(((img[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().byte()
                                        .permute(1, 2, 0).cpu().numpy()))
            lat.append(1000 * (time.perf_counter() - t))
    w.close()
    return n / (time.perf_counter() - t0), lat


def ours(models, src, n, size, prompt, steps, strength, out, stream=False, vae=None):
    from lcmvideo import live
    from lcmvideo.pipeline import img2img

    sty = img2img.Stylizer(models, steps=steps, seed=0)
    if vae is not None:
        sty.vae = vae
    if stream:
        sty = img2img.StreamBatch(sty)
    s = live.run(sty, src, live.Options(prompts=[prompt], strength=strength, width=size, height=size, out=out,
                                        fps=8 if out else None, max_frames=n + WARM, window=False), say=lambda m: None)
    e = list(s.emitted)[-n:]  # the last n output frames (the summary keeps 120 emit times)
    return (len(e) - 1) / (e[-1] - e[0]), list(s.latencies_ms)[-n:]


class Served:
    """`lcmvideo live --serve` with the browser's camera, in its own process as users run it (a client
    in the server's process would compete with its inference threads), on a free loopback port."""

    def __init__(self, flags: dict, size, prompt, steps, strength):
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "lcmvideo", "live", "--serve", "--port", "0", "-p", prompt, "--steps", str(steps),
               "--strength", str(strength), "-W", str(size), "-H", str(size)]
        for k, v in flags.items():
            cmd += [f"--{k.replace('_', '-')}", v]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url, lines = None, []
        for line in self.p.stdout:
            lines.append(line)
            if line.startswith("serving "):
                self.url = line.split()[1]
                break
        if not self.url:
            raise SystemExit("lcmvideo live --serve did not start:\n" + "".join(lines[-5:]))
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()  # keep its pipe read

    def close(self):
        import signal

        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(30)
        except Exception:  # noqa: BLE001 - a server that would not stop
            self.p.kill()


def socket_client(served: Served, n: int, size: int, window: int | None = None):
    """The page's protocol from Python: JPEG frames, `window` in flight (None: the page's rule,
    protocol.in_flight), the next sent when one is answered."""
    import io
    import json
    import struct

    from PIL import Image
    from websockets.sync.client import connect

    from lcmvideo import live
    from lcmvideo.web import protocol

    src = live.Synthetic(fps=0, size=size)
    with connect(served.url.replace("http", "ws", 1).rstrip("/") + "/ws") as ws:
        hello = json.loads(ws.recv(timeout=30))
        inflight, lat, shown, ident, transit, work = {}, [], [], 0, [], []

        def allowed():
            return window or protocol.in_flight(hello["window"], transit, work)

        def send():
            nonlocal ident
            ident += 1
            inflight[ident] = time.perf_counter()  # grabbed now
            buf = io.BytesIO()
            Image.fromarray(src.read()).save(buf, format="JPEG", quality=90)
            ws.send(struct.pack(">I", ident) + buf.getvalue())

        for _ in range(allowed()):
            send()
        while len(lat) < n + WARM:
            msg = ws.recv(timeout=60)
            if isinstance(msg, str):
                m = json.loads(msg)
                inflight.pop(m.get("id"), None)
            else:
                head, jpeg = protocol.read_frame(msg)
                Image.open(io.BytesIO(jpeg)).convert("RGB").load()
                now = time.perf_counter()
                lat.append(1000 * (now - inflight.pop(head["id"])))
                transit.append(lat[-1] - head["latency_ms"])
                work.append(head["work_ms"])
                shown.append(now)
            while len(inflight) < allowed():
                send()
    shown, lat = shown[WARM:], lat[WARM:]
    return (len(shown) - 1) / (shown[-1] - shown[0]), lat


def chromium(served: Served, n: int):
    """The page in headless Chromium with Chromium's fake camera; None where it cannot run."""
    browser, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed"
    if not (browser and driver_path):
        return None, "chromium/chromedriver are not installed"
    os.environ.setdefault("SE_OFFLINE", "true")
    o = Options()
    o.binary_location = browser
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]:
        o.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver_path), options=o)
    try:
        d.get(served.url)
        deadline = time.monotonic() + 120 + n
        while d.execute_script("return window.lcmvideo.frames") < n + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        shown, lat = d.execute_script("return [window.lcmvideo.shown, window.lcmvideo.latencies]")
    finally:
        d.quit()
    shown, lat = shown[5:][-n:], lat[5:][-n:]  # past the camera's start
    return ((len(shown) - 1) / ((shown[-1] - shown[0]) / 1000), lat), ""


def row(name, fps, lat, ref_fps=None, ref_lat=None, extra=""):
    line = f"{name:<16}{fps:>8.2f}{np.median(lat):>11.0f}{np.percentile(lat, 95):>9.0f}"
    if ref_fps is not None:
        line += f"{ref_fps / fps:>11.2f}{np.median(lat) / ref_lat:>15.2f}"
    print(line + extra)


def header(title, ratios=("", "")):
    print(f"\n{title}\n{'loop':<16}{'fps':>8}{'median ms':>11}{'p95 ms':>9}{ratios[0]:>11}{ratios[1]:>15}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few frames of each, 1-2 steps: seconds, for CI")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=None, help="frame size  [default: the model's]")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", help="a base model (e.g. full-size random SD1.5 weights); default: the embedded family")
    ap.add_argument("--motion", help="its motion module")
    ap.add_argument("--lcm-lora", help="its LCM-LoRA")
    ap.add_argument("--sections", default="1,2,3,4", help="which of the four to run, e.g. 1,3")
    ap.add_argument("--no-browser", action="store_true", help="leave out the Chromium row")
    a = ap.parse_args()
    if a.quick:
        a.frames, a.repeats = 12, 1
    stream_steps = [1, 2] if a.quick else [1, 2, 3, 4]

    import torch

    from lcmvideo import live
    from lcmvideo.api import Session
    from lcmvideo.models import embedded

    flags = {k: v for k, v in (("model", a.model), ("motion", a.motion), ("lcm_lora", a.lcm_lora)) if v}
    sections = {int(x) for x in a.sections.split(",")}
    session = Session(**flags)
    models = session.models(session.settings(prompt="x"))
    size = a.size or models.native_size
    tmp = Path(tempfile.mkdtemp())
    prompt = "a blue circle on a black background"
    n = a.frames
    what = a.model or f"embedded family {embedded.version()}"
    print(f"{n} frames {size}x{size}, {a.steps} LCM steps at strength {a.strength}, {what}, "
          f"{models.spec.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads); median over {a.repeats} alternating runs")

    def unpaced():
        return live.Synthetic(fps=0, size=size)

    if 1 in sections:  # 1. the loops
        runs = {"plain": plain, "streamdiff": streamdiff, "lcmvideo": ours}
        fps, lat = {k: [] for k in runs}, {k: [] for k in runs}
        for _ in range(a.repeats):  # alternate, so drift hits every loop alike
            for name, fn in runs.items():
                f, lt = fn(models, unpaced(), n, size, prompt, a.steps, a.strength, tmp / f"{name}.mp4")
                fps[name].append(f)
                lat[name] += lt
        header("1. loops, unpaced source, MP4 written", ("fps ratio", "latency ratio"))
        best = {k: statistics.median(v) for k, v in fps.items()}
        ref_lat = np.median(lat["lcmvideo"])
        for k in runs:
            row(k, best[k], lat[k], best["lcmvideo"], ref_lat)
        print("fps ratio = lcmvideo fps / the loop's; latency ratio = the loop's median / lcmvideo's (>= 1: lcmvideo no later)")
    if 2 in sections:  # 2. browser round trip
        served = Served(flags, size, prompt, a.steps, a.strength)
        try:
            local, sock_, sock2, sock1 = ({"fps": [], "lat": []} for _ in range(4))
            for _ in range(a.repeats):
                for res, fn in ((local, lambda: ours(models, unpaced(), n, size, prompt, a.steps, a.strength, None)),
                                (sock_, lambda: socket_client(served, n, size)),
                                (sock2, lambda: socket_client(served, n, size, window=2)),
                                (sock1, lambda: socket_client(served, n, size, window=1))):
                    f, lt = fn()
                    res["fps"].append(f)
                    res["lat"] += lt
            browser, why = (None, "--no-browser") if a.no_browser or a.quick else chromium(served, n)
        finally:
            served.close()
        header("2. browser round trip against the in-process loop (no recording)", ("fps ratio", "latency ratio"))
        lf, ll = statistics.median(local["fps"]), np.median(local["lat"])
        row("in-process", lf, local["lat"], lf, ll)
        row("socket client", statistics.median(sock_["fps"]), sock_["lat"], lf, ll, "  (the page's rule: 1 or 2 in flight)")
        row("socket, 2", statistics.median(sock2["fps"]), sock2["lat"], lf, ll, "  (always 2 in flight)")
        row("socket, 1", statistics.median(sock1["fps"]), sock1["lat"], lf, ll, "  (always 1 in flight)")
        if browser:
            row("chromium page", browser[0], browser[1], lf, ll, "  (fake camera; the page's own counters)")
        else:
            print(f"{'chromium page':<16}   skipped: {why}")
        print("fps ratio = in-process fps / this row's; latency ratio = this row's median / in-process")
    if 3 in sections:  # 3. stream batch
        print("\n3. stream batch against sequential, unpaced source, no recording")
        print(f"{'loop':<22}{'fps':>8}{'median ms':>11}{'p95 ms':>9}{'fps x':>11}{'latency x':>13}")
        for steps in stream_steps:
            res = {"sequential": ([], []), "stream batch": ([], [])}
            for _ in range(a.repeats):
                for name, stream in (("sequential", False), ("stream batch", True)):
                    f, lt = ours(models, unpaced(), n, size, prompt, steps, a.strength, None, stream=stream)
                    res[name][0].append(f)
                    res[name][1].extend(lt)
            sf, sl = statistics.median(res["sequential"][0]), np.median(res["sequential"][1])
            for name, (fs, ls) in res.items():
                f = statistics.median(fs)
                print(f"{name + f' {steps} steps':<22}{f:>8.2f}{np.median(ls):>11.0f}{np.percentile(ls, 95):>9.0f}"
                      f"{f / sf:>11.2f}{np.median(ls) / sl:>13.2f}")
        print("fps x = this row's fps / sequential's at the same steps; latency x likewise (the batch lags steps - 1 frames)")
    if 4 in sections:  # 4. TAESD
        from diffusers import AutoencoderTiny

        tiny = AutoencoderTiny().to(models.spec.device, models.pipe.vae.dtype).eval()
        res = {"model's VAE": ([], []), "TAESD": ([], [])}
        for _ in range(a.repeats):
            for name, vae in (("model's VAE", None), ("TAESD", tiny)):
                f, lt = ours(models, unpaced(), n, size, prompt, a.steps, a.strength, None, vae=vae)
                res[name][0].append(f)
                res[name][1].extend(lt)
        print("\n4. TAESD (AutoencoderTiny, random weights: time only) against the model's VAE, no recording")
        print(f"{'loop':<22}{'fps':>8}{'median ms':>11}{'p95 ms':>9}{'fps x':>11}{'latency x':>13}")
        vf, vl = statistics.median(res["model's VAE"][0]), np.median(res["model's VAE"][1])
        for name, (fs, ls) in res.items():
            f = statistics.median(fs)
            print(f"{name:<22}{f:>8.2f}{np.median(ls):>11.0f}{np.percentile(ls, 95):>9.0f}{f / vf:>11.2f}"
                  f"{np.median(ls) / vl:>13.2f}")

if __name__ == "__main__":
    main()
