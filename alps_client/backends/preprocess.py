"""Numpy port of Meta's ResizeLongestSide and SAM's normalise-then-pad preprocessing frame.

Meta's ``ResizeLongestSide.apply_image`` is ``resize(to_pil_image(image), (h, w))``: PIL's BILINEAR resize
of the uint8 image (with PIL's antialiasing). We call PIL the same way, so the uint8 input the encoder
sees is identical to the one ``SamPredictor.set_image`` builds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

IMAGE_SIZE = 1024
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def get_preprocess_shape(old_h: int, old_w: int, long_side_length: int = IMAGE_SIZE) -> tuple[int, int]:
    """Size ``(h, w)`` of an ``(old_h, old_w)`` image whose longest side is resized to ``long_side_length``.

    Rounds as Meta does: ``int(x + 0.5)``, but never to 0 px: a side under 1/2048 of the longest (a 1 x 4000 strip)
    keeps 1 px, where Meta's would raise.
    """
    scale = long_side_length * 1.0 / max(old_h, old_w)
    new_h, new_w = old_h * scale, old_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_longest_side(image: npt.NDArray[np.uint8], long_side_length: int = IMAGE_SIZE) -> npt.NDArray[np.uint8]:
    """Resize ``(H, W, 3) uint8`` so its longest side is ``long_side_length`` (PIL BILINEAR, as Meta)."""
    h, w = get_preprocess_shape(image.shape[0], image.shape[1], long_side_length)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def pad_to_square(image: npt.NDArray[np.uint8], size: int = IMAGE_SIZE) -> npt.NDArray[np.uint8]:
    """Zero-pad ``(h, w, 3) uint8`` at the bottom and right to ``(size, size, 3)``.

    The encoder graph zeroes the padded region again *after* normalisation (Meta pads the normalised
    tensor), using the valid ``(h, w)`` it is given; the uint8 pad value therefore does not matter.
    """
    h, w = image.shape[:2]
    if h > size or w > size:
        raise ValueError(f"image of size {(h, w)} does not fit in the {size}x{size} frame; resize it first")
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:h, :w] = image
    return out


def check_image(image: object) -> None:
    """Raise ``ValueError`` unless ``image`` is an ``(H, W, 3) uint8`` RGB array of at least one pixel.

    The message says how to get there from what was given (grey, RGBA, another dtype, a list).
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, (H, W, 3) uint8 RGB, got {type(image).__name__}: "
                         "np.asarray(image, dtype=np.uint8)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        how = (["grey: np.dstack([image] * 3)"] if image.ndim == 2 else
               ["RGBA: image[..., :3]"] if image.ndim == 3 and image.shape[2] == 4 else
               [] if image.ndim == 3 and image.shape[2] == 3 else ["several images: give them one at a time"])
        if image.dtype != np.uint8:
            how.append("another dtype: scale to 0..255, then .astype(np.uint8)")
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype} "
                         f"({'; '.join(how)})")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have at least one row and one column, got shape {image.shape}")


def check_image_list(images: object) -> None:
    """Raise ``ValueError`` if ``images``, given to a backend's ``encode``, is one image instead of a list of them."""
    if isinstance(images, np.ndarray):
        raise ValueError(f"encode takes a list of (H, W, 3) uint8 images, got one array of shape {images.shape}: "
                         "give [image]")


def prepare_encoder_input(
    image: npt.NDArray[np.uint8], long_side_length: int = IMAGE_SIZE
) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """Resize and pad one RGB image for the exported encoder.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        long_side_length: the encoder's square input side (1024 for SAM).

    Returns:
        ``((1024, 1024, 3) uint8, (h, w))``: the padded frame and the resized image's size inside it.
    """
    check_image(image)
    resized = resize_longest_side(image, long_side_length)
    return pad_to_square(resized, long_side_length), (resized.shape[0], resized.shape[1])


def apply_coords(
    coords: npt.NDArray[np.floating], original_size: tuple[int, int], long_side_length: int = IMAGE_SIZE
) -> npt.NDArray[np.float64]:
    """Map ``(..., 2)`` points (x, y) from the original ``(H, W)`` frame to the resized frame (float64)."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, long_side_length)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out
