"""Generators of every odd or bad input a dataset may hold (the tests write them; nothing is committed)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from alps_client.synthetic import make_scene

SIZE = (96, 128)


def scene(seed: int) -> np.ndarray:
    return make_scene(seed, SIZE, n_classes=4)[0]


def write_png16(path: Path, array: np.ndarray, orientation: int = 1) -> None:
    """A PNG of 16 bits per channel, ``(H, W, C)`` uint16 with C = 2 (grey + alpha), 3 (RGB) or 4 (RGBA): PIL cannot
    write these (a camera's or a scanner's 48-bit PNG). ``orientation`` other than 1: in an eXIf chunk."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, c = array.shape
    colour_type = {2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)
    # a big-endian TIFF header and one IFD holding the Orientation tag (0x0112, SHORT)
    exif = b"MM\0*" + struct.pack(">IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + (chunk(b"eXIf", exif) if orientation != 1 else b"")
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_odd_dataset(root: Path) -> dict[str, str]:
    """Write the files; returns {file name: expectation} with expectation 'ok' or the expected reason."""
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}
    rgb = scene(0)
    grey = rgb.mean(axis=2).astype(np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257 + 3).save(root / "sixteen_bit.png")  # I;16
    expect["sixteen_bit.png"] = "ok"
    Image.fromarray(grey).save(root / "grey.png")
    expect["grey.png"] = "ok"
    rgb12 = scene(18).astype(np.uint16) * 16  # 12-bit camera data in a 48-bit PNG: PIL kept the high byte (0..15)
    write_png16(root / "rgb48.png", rgb12)
    expect["rgb48.png"] = "ok"
    rgba16 = np.dstack([rgb12, np.full(SIZE, 65535, np.uint16)])
    rgba16[:, :30, 3] = 0
    write_png16(root / "rgba64.png", rgba16)
    expect["rgba64.png"] = "ok"
    Image.fromarray(np.repeat(rgb[:1], 18, axis=1)).save(root / "scanline.png")  # 1 x 2304: 0 px tall at 1024 wide
    expect["scanline.png"] = "ok"
    rgba = np.dstack([scene(1), np.full(SIZE, 255, np.uint8)])
    rgba[:, :30, 3] = 0  # a fully transparent band on the left
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    expect["rgba.png"] = "ok"
    Image.fromarray(scene(2)).convert("P", palette=Image.ADAPTIVE, colors=32).save(root / "palette.png")
    expect["palette.png"] = "ok"
    # TIFFs of a colour table and of 1 bit: were read as their indices and 0/1 (near black), and labelled nothing
    Image.fromarray(scene(3)).convert("P", palette=Image.ADAPTIVE, colors=6).save(root / "palette_tiff.tif")
    expect["palette_tiff.tif"] = "ok"
    Image.fromarray(scene(4)).convert("1").save(root / "scan_1bit.tif", compression="group4")
    expect["scan_1bit.tif"] = "ok"
    import rasterio

    with rasterio.open(root / "radar_slc.tif", "w", driver="GTiff", width=SIZE[1], height=SIZE[0], count=1,
                       dtype="complex64") as dst:  # a Sentinel-1 SLC: stopped the run as a failure of the machinery
        dst.write(np.full((1, *SIZE), 3 + 4j, np.complex64))
    expect["radar_slc.tif"] = "complex-valued raster"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(scene(3)).save(root / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    expect["exif_rotated.jpg"] = "ok"
    sub = root / "sub folder"
    sub.mkdir()
    Image.fromarray(scene(4)).save(sub / "ünïcode scène 1.png")
    expect["sub folder/ünïcode scène 1.png"] = "ok"
    # A satellite product's tree: the names joined make a stem longer than a file name may be (255 bytes).
    product = Path("S2B_MSIL2A_20240611T103629_N0510_R008_T32TQM_20240611T134522.SAFE", "GRANULE",
                   "L2A_T32TQM_A037992_20240611T104038_" + "é" * 50, "IMG_DATA", "R10m")
    (root / product).mkdir(parents=True)
    Image.fromarray(scene(9)).save(root / product / "T32TQM_20240611T103629_TCI_10m.png")
    expect[str(product / "T32TQM_20240611T103629_TCI_10m.png")] = "ok"
    latin1 = os.fsdecode(b"caf\xe9 latin-1.png")  # a name whose bytes are not UTF-8 (an old Windows share's)
    Image.fromarray(scene(12)).save(root / latin1)
    expect[latin1] = "ok"
    (root / os.fsdecode(b"notes \xe9t\xe9.png")).write_text("not an image, and not a UTF-8 name either\n")
    (root / "two\nlines.png").write_text("not an image, and a newline in its name (split the log line it was in)")
    expect["two\nlines.png"] = "not an image"
    expect[os.fsdecode(b"notes \xe9t\xe9.png")] = "not an image"
    planes = [Image.fromarray(scene(13 + i)) for i in range(3)]  # a z-stack: 3 pages
    planes[0].save(root / "stack.tif", save_all=True, append_images=planes[1:])
    expect["stack.tif"] = "ok"
    frames = [Image.fromarray(scene(s)) for s in (21, 22)]  # labelled as its first frame without a word
    frames[0].save(root / "walk_cycle.png", save_all=True, append_images=frames[1:])  # an animated PNG
    expect["walk_cycle.png"] = "ok"
    Image.fromarray(scene(10)).save(root / "Case.png")  # two names an output disk that ignores case would merge
    expect["Case.png"] = "ok"
    Image.fromarray(scene(11)).save(root / "case.jpg", quality=95)
    expect["case.jpg"] = "ok"
    for name, seed in (("damaged_exif_a.jpg", 19), ("damaged_exif_b.jpg", 20)):  # labelled; PIL's warning named
        write_damaged_exif_jpeg(root / name, scene(seed))
        expect[name] = "ok"
    write_geotiff(root / "geo_rgb.tif", scene(5).transpose(2, 0, 1), "EPSG:32633", (500000.0, 0.5, 4600000.0))
    expect["geo_rgb.tif"] = "ok"
    bands = np.concatenate([scene(6).transpose(2, 0, 1).astype(np.uint16) * 40, np.full((2, *SIZE), 900, np.uint16)])
    write_geotiff(root / "multiband.tif", bands, "EPSG:4326", (10.0, 0.0001, 45.0))
    expect["multiband.tif"] = "ok"
    with_nodata = scene(7).transpose(2, 0, 1).copy()
    with_nodata[:, 60:, :] = 0  # a nodata band at the bottom (a scene edge)
    with_nodata[:, :60][with_nodata[:, :60] == 0] = 1
    write_geotiff(root / "geo_nodata.tif", with_nodata, "EPSG:32633", (500000.0, 0.5, 4600000.0), nodata=0)
    expect["geo_nodata.tif"] = "ok"
    floats = scene(8).mean(axis=2).astype(np.float32)[None] / 7.0
    floats[:, :25] = np.nan  # no measurement there, and no nodata value declared
    floats[:, 25:30] = np.inf
    write_geotiff(root / "float_nan.tif", floats, "EPSG:32633", (500000.0, 0.5, 4600000.0))
    expect["float_nan.tif"] = "ok"
    write_geotiff(root / "all_nan.tif", np.full_like(floats, np.nan), "EPSG:32633", (500000.0, 0.5, 4600000.0))
    expect["all_nan.tif"] = "every pixel is transparent or nodata"
    write_nifti(root / "volume.nii.gz")
    expect["volume.nii.gz"] = "ok"
    import nibabel

    nibabel.save(nibabel.Nifti1Image(scene(17).mean(axis=2).astype(np.int16), np.eye(4)), str(root / "xray.nii"))
    expect["xray.nii"] = "ok"  # a 2-D NIfTI: one plane, labelled as one slice
    write_jpeg2000(root / "sentinel2_tci.jp2", scene(16).transpose(2, 0, 1), "EPSG:32632", (600000.0, 10.0, 5000000.0))
    expect["sentinel2_tci.jp2"] = "ok"
    good = (root / "grey.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    expect["truncated.png"] = "truncated or corrupt"
    (root / "empty.png").write_bytes(b"")
    expect["empty.png"] = "zero-byte file"
    (root / "moved.png").symlink_to(root / "gone" / "moved.png")  # its target moved away
    expect["moved.png"] = f"a broken symbolic link (to {root / 'gone' / 'moved.png'}, No such file or directory)"
    os.mkfifo(root / "pipe.png")  # opened, it would wait for a writer for ever
    expect["pipe.png"] = "not a regular file (a named pipe, a socket or a device)"
    (root / "notes.jpg").write_text("this is text, not a JPEG\n")
    expect["notes.jpg"] = "not an image"
    # Formats alps does not read, among images it reads: they were passed over without a word.
    frames = [Image.fromarray(scene(k)).convert("P") for k in (18, 19)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    expect["animated.gif"] = "GIF is not read: convert to PNG"
    (root / "series").mkdir()
    (root / "series" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\2\0")  # as scanners write it: no extension
    expect["series/IM0001"] = "DICOM is not read: convert each series to a NIfTI volume"
    # Sidecar files are not inputs (see test_discovery_and_reading_of_every_case).
    (root / "series" / "README").write_text("acquisition notes\n")
    (root / "metadata.xml").write_text("<product/>\n")
    return expect


def write_damaged_exif_jpeg(path: Path, rgb: np.ndarray) -> None:
    """A JPEG whose EXIF block names a description lying past the block's end, as a cut-short camera write leaves it.

    PIL reads its pixels and warns of the tag it skips.
    """
    ifd = struct.pack(">IH", 8, 1) + struct.pack(">HHII", 0x010E, 2, 80, 0x7FFF) + struct.pack(">I", 0)
    Image.fromarray(rgb).save(path, exif=b"Exif\0\0MM\0*" + ifd, quality=95)


def write_geotiff(path: Path, bands: np.ndarray, crs: str, origin: tuple[float, float, float],
                  nodata: float | None = None, mask: np.ndarray | None = None) -> None:
    """``bands`` ``(C, H, W)``; ``mask`` ``(H, W)`` bool, True where valid: GDAL's internal mask band."""
    import rasterio
    from rasterio.transform import from_origin

    x, res, y = origin
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=bands.shape[0],
            dtype=bands.dtype, crs=crs, transform=from_origin(x, y, res, res), nodata=nodata) as dst:
        dst.write(bands)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)


def write_jpeg2000(path: Path, bands: np.ndarray, crs: str, origin: tuple[float, float, float]) -> None:
    """A lossless, georeferenced JPEG 2000, as Sentinel-2 delivers its bands (GDAL's OpenJPEG driver)."""
    import rasterio.shutil

    tiff = path.with_suffix(".tmp.tif")
    write_geotiff(tiff, bands, crs, origin)
    rasterio.shutil.copy(tiff, path, driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY="100")
    tiff.unlink()


def write_nifti(path: Path) -> None:
    import nibabel

    vol = np.zeros((64, 72, 6), np.float32)
    yy, xx = np.mgrid[:64, :72]
    for z in (1, 2, 4):  # slices 0, 3 and 5 are empty
        vol[..., z] = 100.0 + 50.0 * ((yy - 32) ** 2 + (xx - 36) ** 2 < (10 + 3 * z) ** 2)
    vol[2:17, 2:17, 4] = 250.0  # a bright spot in one slice only: a per-slice stretch would change its greys
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nibabel.save(nibabel.Nifti1Image(vol, affine), str(path))
