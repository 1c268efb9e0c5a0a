"""live's window: tkinter (the standard library's GUI) showing frames that Pillow draws.

Not OpenCV's imshow: the default install carries opencv-python-headless, and OpenCV's GUI build
needs the system's GL and X libraries and breaks `import cv2` on a headless server. tkinter comes
with Python (python.org, Windows and macOS builds; Debian/Ubuntu: `apt install python3-tk`),
installs nothing from PyPI, and Pillow's ImageTk puts frames into it. Where tkinter is missing,
`lcmvideo live` opens its browser page instead (app.live_command).

Keys: q/Esc quit, space pause, s snapshot, p next prompt; closing the window quits. The overlay
shows fps, latency and the prompt. All calls come from the live loop's main thread.
"""

from __future__ import annotations

import numpy as np

from .errors import runtime

KEYS = {"q": "quit", "Escape": "quit", "space": "pause", "s": "snapshot", "p": "next_prompt"}
SHOWN_SIZE = 384  # small frames are scaled up (nearest) to about this


def available() -> tuple[bool, str]:
    try:
        import tkinter  # noqa: F401

        from PIL import ImageTk  # noqa: F401
    except ImportError as e:
        return False, f"tkinter is missing ({e.name}; on Debian/Ubuntu: apt install python3-tk)"
    return True, ""


def overlay(image: np.ndarray, info: dict, scale: int = 1):
    """The frame scaled up, with 'fps  latency  prompt' on a dark band: a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    text = f"{info.get('fps', 0):.1f} fps  {info.get('latency_ms', 0):.0f} ms  {info.get('prompt', '')[:40]}"
    try:
        font = ImageFont.load_default(size=13)
    except (TypeError, OSError):  # an older Pillow, or one without FreeType: the bitmap font
        font = ImageFont.load_default()
    d = ImageDraw.Draw(img)
    box = d.textbbox((6, 4), text, font=font)
    d.rectangle((0, 0, img.width, box[3] + 4), fill=(0, 0, 0))
    d.text((6, 4), text, fill=(255, 255, 255), font=font)
    return img


class Window:
    """A Tk window fed frame by frame; keys become the loop's requests (`request(action)`)."""

    def __init__(self, request, width: int, height: int, title: str = "lcmvideo live"):
        import tkinter as tk

        self.tk, self.request, self.closed, self.shown = tk, request, False, 0
        try:
            self.root = tk.Tk()
        except tk.TclError as e:
            raise runtime(f"no window could open on this display ({str(e).splitlines()[0]})") from None
        self.root.title(title)
        self.scale = max(1, SHOWN_SIZE // max(width, height))
        self.label = tk.Label(self.root, bg="black", width=width * self.scale, height=height * self.scale)
        self.label.pack()
        self.photo = None  # Tk shows an image only while Python holds it
        self.root.bind("<Key>", self._key)
        self.root.protocol("WM_DELETE_WINDOW", lambda: request("quit"))
        self.pump()

    def _key(self, event):
        action = KEYS.get(event.keysym) or KEYS.get(event.char)
        if action:
            self.request(action)

    def show(self, image: np.ndarray, info: dict):
        from PIL import ImageTk

        if self.closed:
            return
        self.photo = ImageTk.PhotoImage(overlay(image, info, self.scale), master=self.root)
        self.label.configure(image=self.photo, width=self.photo.width(), height=self.photo.height())
        self.shown += 1
        self.pump()

    def pump(self):
        """Let Tk draw and deliver key presses."""
        if self.closed or self.root is None:
            return
        try:
            self.root.update()
        except self.tk.TclError:  # the window was destroyed under us
            self.closed = True
            self.request("quit")

    def close(self):
        """Destroy the window and free Tk here: Tk aborts the process if another thread frees it later."""
        import gc

        if self.root is None:
            return
        self.closed, self.photo = True, None
        try:
            self.root.destroy()
        except self.tk.TclError:
            pass
        self.root = self.label = None
        gc.collect()
