"""live --serve's page in real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) with a fake camera: stylized frames arrive, and change when the prompt changes; a
wrong or missing token on a non-loopback bind is refused by the page and by the socket.

The fake camera plays a still picture (a y4m file), so with the same prompt every stylized frame
is the same and only the prompt can change it. Chromium may resolve no name but the loopback.
Skipped, with the reason, where chromium or chromedriver is missing; .ci/run installs them."""

import os
import shutil
import socket
import time

import numpy as np
import pytest
from test_live_serve import serving

from lcmvideo import live
from lcmvideo.web import server as web

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="chromium and chromedriver are not installed (apt install chromium chromium-driver)")


def still_y4m(path, size=96):
    """A one-frame YUV4MPEG2 file (Chromium loops it): the synthetic source's circle, I420."""
    import cv2

    rgb = cv2.resize(live.Synthetic(fps=0, size=64).read(), (size, size), interpolation=cv2.INTER_NEAREST)
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    path.write_bytes(f"YUV4MPEG2 W{size} H{size} F30:1 Ip A1:1 C420jpeg\n".encode() + b"FRAME\n" + yuv.tobytes())
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    cam = still_y4m(tmp_path_factory.mktemp("camera") / "still.y4m")
    o = Options()
    o.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--no-default-browser-check", "--window-size=900,800",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE 127.0.0.2, EXCLUDE localhost",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={cam}"]:
        o.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=o)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script, timeout=90.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return window.lcmvideo && JSON.stringify({m: lcmvideo.messages, f: lcmvideo.frames})")
    raise AssertionError(f"timed out waiting for {what or script}; page state: {state}")


def pixels(driver) -> np.ndarray:
    data = driver.execute_script("const c = document.getElementById('output');"
                                 "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);")
    return np.array(data, dtype=np.int16)


def next_frame(driver, after: int) -> np.ndarray:
    wait_for(driver, f"return window.lcmvideo.frames > {after}", what=f"a frame after {after}")
    return pixels(driver)


@pytest.fixture(scope="module")
def stylizer(tiny_models):
    from lcmvideo.pipeline import img2img

    return img2img.Stylizer(tiny_models, steps=1, seed=0)


def test_page_stylizes_the_camera_and_follows_the_prompt(browser, stylizer):
    with serving(stylizer, prompts=("a red circle", "a blue square")) as (hub, base, log, result):
        hub.loop.update(strength=0.8)
        browser.get(base + "/")
        wait_for(browser, "return window.lcmvideo.frames >= 2", what="stylized frames")
        n = browser.execute_script("return window.lcmvideo.frames")
        a = next_frame(browser, n)
        a2 = next_frame(browser, n + 1)
        assert browser.execute_script("return window.lcmvideo.last.prompt") == "a red circle"
        assert a.size == 64 * 64 * 4 and a.reshape(-1, 4)[:, :3].std() > 1  # a picture, not a blank canvas
        prompt = browser.find_element("id", "prompt")
        prompt.clear()
        prompt.send_keys("a blue square")
        browser.find_element("id", "apply").click()
        wait_for(browser, "return window.lcmvideo.last && window.lcmvideo.last.prompt === 'a blue square'",
                 what="a frame with the new prompt")
        n = browser.execute_script("return window.lcmvideo.frames")
        b = next_frame(browser, n)
        stats = browser.find_element("id", "stats").text
        s = result
    same, changed = np.abs(a2 - a).mean(), np.abs(b - a).mean()
    assert same < 0.5 and changed > same + 0.3, (same, changed)  # a still camera: only the prompt changed it
    assert "fps" in stats and "latency" in stats
    assert hub.loop.params.prompt == "a blue square"
    assert s["summary"].frames_out >= 4


def test_wrong_or_missing_token_is_refused(browser, stylizer):
    host = "127.0.0.2"
    try:
        socket.create_server((host, 0)).close()
    except OSError:
        pytest.skip(f"{host} cannot be bound here")
    token = web.make_token(host, None)
    with serving(stylizer, host=host, token=token) as (hub, base, log, result):
        for url in [base + "/", base + "/?token=not-the-token-not-the-token"]:
            browser.get(url)
            assert "403" in browser.find_element("tag name", "body").text
            assert not browser.execute_script("return !!window.lcmvideo")  # no page, no script
        browser.get(f"{base}/?token={token}")
        wait_for(browser, "return window.lcmvideo.frames >= 1", what="frames with the right token")
        # the socket checks the token on its own: the page's script opening one without it is refused
        browser.execute_script("""
            window.probe = {};
            for (const t of ["", "?token=wrong-token-wrong-token"]) {
                const s = new WebSocket(`ws://${location.host}/ws${t}`);
                s.onopen = () => { window.probe[t] = "open"; };
                s.onclose = () => { window.probe[t] = window.probe[t] || "refused"; };
            }""")
        probe = wait_for(browser, "return Object.keys(window.probe).length === 2 && window.probe", what="the probes")
    assert set(probe.values()) == {"refused"}, probe
    assert any("missing token" in m for m in log) and any("wrong token" in m for m in log)
