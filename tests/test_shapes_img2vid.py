"""A clip from a picture means what it should on the shipped shapes family: the picture's shape,
colour and place start the clip, against a prompt that asks for another colour and shape."""

import numpy as np
import pytest

from lcmvideo.models import embedded
from lcmvideo.shapes import analyse, world

trained = pytest.mark.skipif(not embedded.has_shipped(), reason="the shapes weights are not shipped in this checkout")
# the trained family, as a user gets it (tests/conftest.py picks the twin); `session` is on it too
pytestmark = pytest.mark.usefixtures("shapes_family")


def at_picture(reading, x=20, y=40) -> bool:
    return reading.colour == "red" and abs(reading.x - x) < 4 and abs(reading.y - y) < 4


@trained
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_red_circle_picture_starts_a_blue_square_clip(session, tmp_path, seed):
    from PIL import Image

    Image.fromarray(world.draw(world.Scene("circle", "red", "black", 20, 40, 9))).save(tmp_path / "red.png")
    kw = dict(prompt="a blue square", frames=16, steps=4, seed=seed)
    plain = analyse.read_clip(session.render(**kw))
    held = analyse.read_clip(session.render(**kw, init_image=str(tmp_path / "red.png"), init_strength=0.9))
    assert all(at_picture(r) for r in held[:4]), [(r.colour, round(r.x), round(r.y)) for r in held]
    assert not any(at_picture(r) for r in plain[:4]), [(r.colour, round(r.x), round(r.y)) for r in plain]
    # the picture's blob at its size (9 px radius; the analyser tells colours and places, not shapes)
    assert abs(np.mean([r.area for r in held[:4]]) - np.pi * 81) < 0.25 * np.pi * 81
