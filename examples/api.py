"""Render from Python: load the models once, make variants, write one of them.

    python examples/api.py [OUT.mp4]      # on the embedded default, seconds on a CPU
"""

import sys
from pathlib import Path

from lcmvideo import Session

out = Path(sys.argv[1] if len(sys.argv) > 1 else "travel.mp4")
session = Session()  # Session(model="dreamshaper_8.safetensors", motion="mm_sd_v15_v2.ckpt", lcm_lora=...)
variants = [session.render(prompt="a red circle on a black background", frames=8, seed=seed) for seed in (1, 2, 3)]
print("rendered", len(variants), "variants of shape", variants[0].shape, "with", session.loads, "model load")
session.render_to_file(Path(__file__).parent.parent / "prompts" / "travel.yaml", out, frames=24)
print(f"wrote {out} and {out}.json")
