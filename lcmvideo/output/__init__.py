"""Frames in and out: video and image files read and written (atomically, with metadata), and the
flicker measures of a clip. No torch: frames are numpy uint8 RGB (T, H, W, 3)."""
