"""live --serve without a browser: the socket protocol (newest frame wins, nothing queues; bad
messages are answered and the session goes on), the token and origin checks, the CLI's errors.
Every server here binds a loopback address and is stopped at the end of its test."""

import io
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lcmvideo import live
from lcmvideo.cli import cli
from lcmvideo.errors import LcmvideoError
from lcmvideo.output import video
from lcmvideo.web import protocol
from lcmvideo.web import server as web

websockets = pytest.importorskip("websockets.sync.client")


class SlowStylizer:
    """The Stylizer's call interface: sleeps like a slow model; the output depends on the prompt."""

    def __init__(self, delay=0.1):
        self.delay, self.encodes, self.steps, self.seed, self.calls = delay, 0, 2, 0, 0

    def __call__(self, image, prompt, strength, controls=()):
        self.calls += 1
        time.sleep(self.delay)
        shade = sum(prompt.encode()) % 200
        return type("F", (), {"image": np.clip(image.astype(int) // 2 + shade, 0, 255).astype(np.uint8)})()


@contextmanager
def serving(stylizer, source=None, host="127.0.0.1", token=None, prompts=("a red circle", "a blue square"),
            tls=None, **hub_kw):
    """A server on a free port around a live loop on its own thread; yields (hub, base URL, log)."""
    log, ready, result = [], threading.Event(), {}
    sock = web.bind(host, 0)
    hub = web.Hub(token, say=log.append, **hub_kw)
    opts = live.Options(prompts=list(prompts), window=False, width=64, height=64, duration=120)

    def announce(msg):
        result["url"] = msg.split()[1]
        ready.set()

    def run():
        try:
            result["summary"] = web.serve(stylizer, source, opts, sock, host, token, say=log.append, hub=hub,
                                          announce=announce, tls=tls)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            result["error"] = e
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30), "the server did not start"
    assert "error" not in result, result.get("error")
    try:
        yield hub, result["url"].split("?")[0].rstrip("/"), log, result
    finally:
        hub.loop.request("quit")
        t.join(30)
        sock.close()
        assert not t.is_alive(), "the server did not stop"


def ws_url(base, token=None):
    return base.replace("http", "ws", 1) + "/ws" + (f"?token={token}" if token else "")


def jpeg(image, quality=90):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def frame_msg(ident, data):
    return struct.pack(">I", ident) + data


def picture(i=0, size=64):
    img = np.full((size, size, 3), 30, np.uint8)
    img[:, (i * 3) % size:(i * 3) % size + 8] = 220
    return img


def answers(ws, want_ids, timeout=30.0):
    """Read until every id in want_ids is answered; returns {id: [kinds]}, frames {id: header}, others."""
    got, frames, others = {}, {}, []
    deadline = time.monotonic() + timeout
    while not set(want_ids) <= set(got):
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            head, _ = protocol.read_frame(msg)
            if head["id"] is None:
                continue
            got.setdefault(head["id"], []).append("frame")
            frames[head["id"]] = head
        else:
            m = json.loads(msg)
            if "id" in m:
                got.setdefault(m["id"], []).append(m["type"])
            others.append(m)
    return got, frames, others


def hello(ws):
    m = json.loads(ws.recv(timeout=10))
    assert m["type"] == "hello"
    return m


def test_slow_model_drops_frames_never_queues():
    sty = SlowStylizer(delay=0.25)
    with serving(sty) as (hub, base, log, result), websockets.connect(ws_url(base)) as ws:
        h = hello(ws)
        assert h["size"] == [64, 64] and h["window"] == 2 and not h["watch"]
        n = 40
        t0 = time.monotonic()
        for i in range(1, n + 1):  # a client ignoring its window: far faster than the model
            ws.send(frame_msg(i, jpeg(picture(i))))
        got, frames, _ = answers(ws, range(1, n + 1))
        elapsed = time.monotonic() - t0
    assert all(len(k) == 1 for k in got.values()), "every frame is answered exactly once"
    stylized = sorted(frames)
    assert len(stylized) <= elapsed / sty.delay + 2  # the model's pace, not the client's
    assert sum(k == ["dropped"] for k in got.values()) >= n - len(stylized) >= n // 2
    assert stylized[-1] == n  # the newest frame was the one kept
    assert max(f["latency_ms"] for f in frames.values()) < 3 * sty.delay * 1000  # none waited behind others
    s = result["summary"]
    assert s.frames_in == n and s.frames_in == s.frames_out + s.dropped + s.skipped + s.rejected


def test_latency_does_not_grow_with_a_flooding_client():
    sty = SlowStylizer(delay=0.05)
    with serving(sty) as (hub, base, log, result), websockets.connect(ws_url(base)) as ws:
        hello(ws)
        lat, i, t_end = [], 0, time.monotonic() + 4.0
        data = [jpeg(picture(k)) for k in range(8)]
        while time.monotonic() < t_end:
            i += 1
            ws.send(frame_msg(i, data[i % 8]))
            time.sleep(0.004)  # ~250 frames/s against a 20 frames/s model
            try:
                while True:
                    msg = ws.recv(timeout=0)
                    if isinstance(msg, bytes):
                        lat.append(protocol.read_frame(msg)[0]["latency_ms"])
            except TimeoutError:
                pass
    assert i > 400 and len(lat) > 20
    third = len(lat) // 3
    early, late = np.median(lat[:third]), np.median(lat[-third:])
    assert late < 3 * sty.delay * 1000 and late <= early * 1.5 + 30, (early, late)


def test_bad_frames_and_messages_get_errors_and_the_session_goes_on():
    sty = SlowStylizer(delay=0.01)
    with serving(sty, max_bytes=20_000, max_pixels=512 * 512) as (hub, base, log, result), \
            websockets.connect(ws_url(base)) as ws:
        hello(ws)
        noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        png = io.BytesIO()
        Image.fromarray(noise).save(png, format="PNG")
        assert len(png.getvalue()) > 20_000
        ws.send(frame_msg(1, png.getvalue()))  # over the byte limit
        # a JPEG header claiming 10000x10000 pixels, and nothing after it: refused from its header
        bomb = b"\xff\xd8" + b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 10000, 10000, 3) + b"\x01\x22\x00" * 3
        ws.send(frame_msg(2, bomb))
        ws.send(frame_msg(3, b"GIF89a this is not an image we take"))
        ws.send(frame_msg(4, jpeg(picture())[:300]))  # a cut JPEG: its header reads, it does not decode
        got, frames, others = answers(ws, [1, 2, 3, 4])  # (4 answered before 5 goes, or 5 would replace it)
        ws.send(b"\x00\x01")  # too short to carry an id
        for text in ["not json", "[1, 2]", '{"type": "nope"}', '{"type": "settings", "strength": 5}',
                     '{"type": "settings", "colour": "red"}', '{"type": "record", "on": "yes"}']:
            ws.send(text)
        ws.send(frame_msg(5, jpeg(picture())))
        got5, frames5, others5 = answers(ws, [5])
        got, others = {**got, **got5}, others + others5
    errors = {m.get("id"): m["message"] for m in others if m["type"] == "error" and "id" in m}
    assert "over the limit of 20000" in errors[1]
    assert "10000x10000" in errors[2] and "pixels" in errors[2]
    assert "not a JPEG or PNG" in errors[3]
    assert "does not decode" in errors[4]
    assert got[5] == ["frame"]  # the session went on
    texts = [m["message"] for m in others if m["type"] == "error" and "id" not in m]
    for words in ["4-byte id", "not JSON", '"type"', "unknown type 'nope'", "strength must be in", "unknown key 'colour'",
                  "true or false"]:
        assert any(words in t for t in texts), (words, texts)
    assert sum("client" in m for m in log) >= 11  # each logged
    s = result["summary"]
    assert s.rejected == 1 and s.frames_out == 1


def test_settings_change_the_prompt_for_every_client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with serving(SlowStylizer(delay=0.01)) as (hub, base, log, result), \
            websockets.connect(ws_url(base)) as ws, websockets.connect(ws_url(base)) as other:
        hello(ws), hello(other)
        ws.send(frame_msg(1, jpeg(picture())))
        _, frames, _ = answers(ws, [1])
        assert frames[1]["prompt"] == "a red circle"
        ws.send(json.dumps({"type": "settings", "prompt": "a blue square", "strength": 0.7, "steps": 3, "seed": 9,
                            "similarity": None}))
        m = json.loads(other.recv(timeout=10))
        assert m["type"] == "settings" and m["params"]["prompt"] == "a blue square" and m["params"]["steps"] == 3
        ws.send(frame_msg(2, jpeg(picture())))
        _, frames, _ = answers(ws, [2])
        assert frames[2]["prompt"] == "a blue square"
        assert hub.loop.stylizer.steps == 3 and hub.loop.stylizer.seed == 9
        ws.send(json.dumps({"type": "record", "on": True}))
        for i in range(3, 9):
            ws.send(frame_msg(i, jpeg(picture(i))))
            answers(ws, [i])
        ws.send(json.dumps({"type": "snapshot"}))
        ws.send(json.dumps({"type": "record", "on": False}))
        kinds, deadline = {}, time.monotonic() + 30
        while not {"recorded", "snapshot"} <= set(kinds) and time.monotonic() < deadline:
            msg = ws.recv(timeout=10)
            if isinstance(msg, str):
                m = json.loads(msg)
                kinds[m["type"]] = m
    rec = tmp_path / kinds["recorded"]["path"]
    assert video.read(rec)[0].shape == (6, 64, 64, 3)
    assert Image.open(tmp_path / kinds["snapshot"]["path"]).size == (64, 64)
    assert not list(tmp_path.glob(".*tmp*"))  # written through temp files, renamed into place


def test_watching_the_servers_source():
    src = live.Synthetic(fps=30, size=64)
    with serving(SlowStylizer(delay=0.02), source=src) as (hub, base, log, result), \
            websockets.connect(ws_url(base)) as ws:
        assert hello(ws)["watch"]
        heads = []
        while len(heads) < 5:
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes):
                heads.append(protocol.read_frame(msg)[0])
        ws.send(frame_msg(1, jpeg(picture())))
        got, _, others = answers(ws, [1])
    assert all(h["id"] is None for h in heads) and heads[-1]["seq"] > heads[0]["seq"]
    assert got[1] == ["error"] and "takes no frames" in others[-1]["message"]


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_token_on_a_non_loopback_bind():
    host = "127.0.0.2"  # the loopback network, but not 127.0.0.1: a token is needed
    try:
        socket.create_server((host, 0)).close()
    except OSError:
        pytest.skip(f"{host} cannot be bound here")
    token = web.make_token(host, None)
    assert token and len(token) >= 24
    with serving(SlowStylizer(0.01), host=host, token=token) as (hub, base, log, result):
        assert get(base + "/")[0] == 403
        assert get(base + "/?token=wrong-token-wrong-token")[0] == 403
        assert get(base + "/app.js")[0] == 403
        status, page = get(f"{base}/?token={token}")
        assert status == 200 and f"app.js?token={token}" in page
        assert get(f"{base}/app.js?token={token}")[0] == 200
        assert get(f"{base}/../../etc/passwd?token={token}")[0] == 404
        assert get(f"{base}/data/web/index.html?token={token}")[0] == 404
        for bad in [None, "wrong-token-wrong-token"]:
            with pytest.raises(Exception, match="403"):
                websockets.connect(ws_url(base, bad), open_timeout=10)
        with websockets.connect(ws_url(base, token)) as ws:
            assert hello(ws)["type"] == "hello"
    assert any("wrong token" in m for m in log) and any("missing token" in m for m in log)


def test_loopback_needs_a_loopback_host_and_the_pages_origin():
    with serving(SlowStylizer(0.01)) as (hub, base, log, result):
        assert get(base + "/")[0] == 200
        port = base.rsplit(":", 1)[1]
        assert get(base + "/", {"Host": f"attacker.example:{port}"})[0] == 403  # DNS rebinding
        with pytest.raises(Exception, match="403"):
            websockets.connect(ws_url(base), origin="http://attacker.example", open_timeout=10)
        with websockets.connect(ws_url(base), origin=base) as ws:
            assert hello(ws)["type"] == "hello"


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed (to make a test certificate)")
def test_https_with_a_certificate(tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    with serving(SlowStylizer(0.01), tls=(str(cert), str(key))) as (hub, base, log, result):
        assert base.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        with urllib.request.urlopen(base + "/", context=ctx, timeout=10) as r:
            assert r.status == 200 and b"lcmvideo live" in r.read()
        with websockets.connect(base.replace("https", "wss", 1) + "/ws", ssl=ctx) as ws:
            assert hello(ws)["type"] == "hello"


def test_header_checks_without_a_server():
    assert protocol.image_size(jpeg(picture(size=48))) == ("JPEG", 48, 48)
    png = io.BytesIO()
    Image.fromarray(picture()).save(png, format="PNG")
    assert protocol.image_size(png.getvalue()) == ("PNG", 64, 64)
    assert protocol.decode_image(png.getvalue()).shape == (64, 64, 3)
    for junk in [b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", b"\x89PNG\r\n\x1a\n\x00\x00"]:
        with pytest.raises((protocol.FrameError, LcmvideoError)):
            protocol.check_frame(b"\x00\x00\x00\x07" + junk)


def test_cli_serve_errors_are_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = CliRunner().invoke(cli, ["live", "--serve", "--port", str(port), "-p", "x"])
    assert r.exit_code == 1 and f"--port {port}: already in use" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["live", "--host", "127.0.0.2", "-p", "x"])
    assert r.exit_code == 2 and "--host goes with --serve" in r.output
    r = CliRunner().invoke(cli, ["live", "--serve", "--token", "short", "-p", "x"])
    assert r.exit_code == 2 and "--token" in r.output
    r = CliRunner().invoke(cli, ["live", "--serve", "--port", "70000", "-p", "x"])
    assert r.exit_code == 2 and "--port" in r.output
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    r = CliRunner().invoke(cli, ["live", "--serve", "--tls-cert", str(cert), "-p", "x"])
    assert r.exit_code == 2 and "--tls-key" in r.output


def test_in_flight_rule():
    """One frame in flight where the network's part is small against the model's; the window where
    it is not (or the stream batch's window, which must fill the batch)."""
    assert protocol.in_flight(2, [1.0] * 9, [40.0] * 9) == 2  # too few samples yet
    assert protocol.in_flight(2, [3.0] * 20, [40.0] * 20) == 1  # loopback: no frame should wait
    assert protocol.in_flight(2, [30.0] * 20, [40.0] * 20) == 2  # a real network: overlap sending and work
    assert protocol.in_flight(4, [3.0] * 20, [40.0] * 20) == 4
