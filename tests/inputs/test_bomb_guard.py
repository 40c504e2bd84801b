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


def _png_with_chunk(path, kind: bytes, data: bytes) -> None:
    """A small PNG with a ``kind`` chunk holding ``data`` inserted after its header chunk."""
    import struct
    import zlib

    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(path)
    png = path.read_bytes()
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(png[:33] + chunk + png[33:])  # 8-byte signature + the 25-byte IHDR chunk


def test_a_png_whose_text_or_colour_profile_inflates_to_hundreds_of_mib_is_rejected_by_name(tmp_path):
    """PIL refuses such a chunk with a ValueError: the run ended in "internal error" while finding its images,
    the file unnamed, and every rerun the same."""
    import zlib

    from alps_client.io.discovery import discover_inputs

    inflating = zlib.compress(b"A" * 200 * 2**20, 9)  # ~200 KB on disk
    _png_with_chunk(tmp_path / "text_bomb.png", b"zTXt", b"Comment\0\0" + inflating)
    _png_with_chunk(tmp_path / "profile_bomb.png", b"iCCP", b"profile\0\0" + inflating)
    Image.fromarray(np.full((16, 16, 3), 30, np.uint8)).save(tmp_path / "good.png")
    for name in ("text_bomb.png", "profile_bomb.png"):
        with pytest.raises(InputImageError, match=name):
            image_size_of(tmp_path / name)
        with pytest.raises(InputImageError, match=name):
            load_item(InputItem(str(tmp_path / name), "bomb"))
    items, rejected = discover_inputs(tmp_path)
    assert [item.stem for item in items] == ["good"]
    assert sorted(error.path.rsplit("/", 1)[-1] for error in rejected) == ["profile_bomb.png", "text_bomb.png"]
    assert all("metadata" in error.reason for error in rejected)
