"""PIL's decompression-bomb guard stays on; only header reads and scenes read in tiles raise its limit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alps_client.config import InputConfig
from alps_client.errors import InputImageError
from alps_client.io.items import InputItem
from alps_client.io.readers import image_size_of, load_item
from tests.conftest import REPO_ROOT


def test_importing_the_readers_keeps_pils_guard():
    code = ("from PIL import Image; default = Image.MAX_IMAGE_PIXELS; import alps_client.io.readers, "
            "alps_client.io.discovery; print(Image.MAX_IMAGE_PIXELS == default and default is not None)")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr


def test_the_guard_refuses_a_whole_image_and_lets_tiles_through(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # the 120x160 image is now a "bomb" (> 2 x 5000 pixels)
    with pytest.raises(InputImageError, match="decompression-bomb limit.*--tile"):
        load_item(InputItem(str(path), "big"))
    assert image_size_of(path) == (120, 160)  # the header is read to say so
    tile = load_item(InputItem(str(path), "big__x0_y0", kind="tile", scene="big", window=(0, 0, 64, 64)),
                     InputConfig(tile=64, overlap=0))
    assert tile.rgb.shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 5000  # raised only while the tiled scene was opened
