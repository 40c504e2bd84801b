"""Odd and bad inputs through discovery, reading and the whole flow; large scenes tiled with bounded memory."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
from PIL import Image, ImageOps

from alps_client.config import InputConfig
from alps_client.errors import AlpsError, InputImageError, shortened
from alps_client.io.discovery import discover_inputs
from alps_client.io.items import InputError, InputItem, printable
from alps_client.io.loaded import stretch_to_uint8
from alps_client.io.readers import load_item
from alps_client.io.tiling import stitch_scene, stitch_windows, tile_windows
from alps_client.runs.plan import describe_items
from tests.coco_checks import assert_coco_consistent
from tests.conftest import REPO_ROOT, make_shapes_image
from tests.inputs.make_files import (
    SIZE,
    scene,
    write_damaged_exif_jpeg,
    write_geotiff,
    write_nifti,
    write_odd_dataset,
)
from tests.runs import cli_env


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    return root, write_odd_dataset(root)


def test_discovery_and_reading_of_every_case(odd):
    root, expect = odd
    multipage = []
    items, errors = discover_inputs(root, InputConfig(), on_pages=lambda *page: multipage.append(page))
    assert multipage == [(str(root / "stack.tif"), 3), (str(root / "walk_cycle.png"), 2)]
    by_source = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    rejected = {e.path: e.reason for e in errors}
    assert not {printable(str(root / n)) for n in ("metadata.xml", "series/README")} & set(rejected)  # sidecars
    for name, expectation in expect.items():
        path = str(root / name)
        if expectation == "ok":
            assert path in by_source, f"{name} was not discovered: {rejected.get(printable(path))}"
        else:
            reason = rejected.get(printable(path))
            if reason is None:  # some corruption only shows when the pixels are decoded
                with pytest.raises(InputImageError, match=expectation):
                    load_item(by_source[path][0])
            else:
                assert expectation in reason, (name, reason)
    grey = load_item(by_source[str(root / "grey.png")][0])
    assert grey.rgb.shape == (*SIZE, 3) and (grey.rgb[..., 0] == grey.rgb[..., 2]).all() and grey.plain_copy is False
    sixteen = load_item(by_source[str(root / "sixteen_bit.png")][0])
    assert sixteen.rgb.dtype == np.uint8 and sixteen.rgb.max() > 200 and sixteen.extra["stretch"]
    rgba = load_item(by_source[str(root / "rgba.png")][0])
    assert rgba.valid is not None and not rgba.valid[:, :30].any() and rgba.valid[:, 30:].all()
    for name in ("rgb48.png", "rgba64.png"):  # all 16 bits, stretched: the scene itself, up to rounding
        wide = load_item(by_source[str(root / name)][0])
        assert wide.extra["dtype"] == "uint16" and wide.rgb.max() == 255 and not wide.plain_copy
        assert np.corrcoef(wide.rgb[:, 30:].ravel(), scene(18)[:, 30:].ravel())[0, 1] > 0.99
    assert not wide.valid[:, :30].any() and wide.valid[:, 30:].all()  # its alpha
    for name in ("palette_tiff.tif", "scan_1bit.tif", "palette.png"):  # as an image viewer shows them
        shown = np.asarray(Image.open(root / name).convert("RGB"))
        assert np.array_equal(load_item(by_source[str(root / name)][0]).rgb, shown), name
    rotated = load_item(by_source[str(root / "exif_rotated.jpg")][0])
    assert rotated.rgb.shape[:2] == SIZE[::-1]
    geo = load_item(by_source[str(root / "geo_rgb.tif")][0])
    assert "32633" in geo.geo["crs"] or "UTM" in geo.geo["crs"]
    sentinel = load_item(by_source[str(root / "sentinel2_tci.jp2")][0])
    assert "32632" in sentinel.geo["crs"] and (sentinel.rgb == scene(16)).all()  # lossless: the very pixels
    floats = load_item(by_source[str(root / "float_nan.tif")][0])
    assert not floats.valid[:30].any() and floats.valid[30:].all() and floats.extra["stretch"][1] < 255 / 7 + 1
    multi = load_item(by_source[str(root / "multiband.tif")][0])
    assert multi.extra["bands"] == [1, 2, 3]
    slices = sorted(i.slice_index for i in by_source[str(root / "volume.nii.gz")])
    assert slices == [1, 2, 4]  # empty slices skipped
    grey = {(int(v.rgb[0, 0, 0]), int(v.rgb[32, 36, 0]))  # background and disc of each slice
            for v in (load_item(i) for i in by_source[str(root / "volume.nii.gz")])}
    assert len(grey) == 1  # one intensity window for the whole volume: equal values, equal grey, in every slice
    assert any("ünïcode scène 1" in i.stem for i in items)
    assert len({i.stem.casefold() for i in items}) == len(items)
    (product,) = by_source[next(s for s in by_source if s.endswith("TCI_10m.png"))]
    assert product.stem.endswith("__R10m__T32TQM_20240611T103629_TCI_10m") and len(product.stem.encode()) <= 180
    with pytest.raises(InputImageError, match="has 5 band"):
        load_item(by_source[str(root / "multiband.tif")][0], InputConfig(bands=(1, 2, 7)))
    # and at discovery, from its header: it was found only once the model had started, and --dry-run counted it to
    # label (option audit)
    _, rejected = discover_inputs(root, InputConfig(bands=(1, 2, 7)))
    assert [e.reason for e in rejected if e.path == str(root / "multiband.tif")] == [
        "has 5 band(s), --bands asks for [1, 2, 7]"]


def test_what_pil_warns_of_while_reading_is_said_once_naming_the_file(tmp_path, caplog, recwarn, monkeypatch):
    """PIL warns of a damaged EXIF block through ``warnings``: its line named PIL's source, not the file, and the
    second file's warning was hidden as a repeat."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from alps_client.io.readers import name_pil_warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # the process's hook, as it was after
    name_pil_warnings()  # as a run installs it
    for name, seed in (("a.jpg", 1), ("b.jpg", 2)):
        write_damaged_exif_jpeg(tmp_path / name, scene(seed))
    with caplog.at_level("WARNING", logger="alps_client"):
        items, rejected = discover_inputs(tmp_path, InputConfig())
        for item in items + items:  # read twice, said once
            assert load_item(item).rgb.shape == (*SIZE, 3)
    assert len(items) == 2 and not rejected
    said = [record.getMessage() for record in caplog.records]
    for name in ("a.jpg", "b.jpg"):
        assert [line for line in said if line.startswith(f"{tmp_path / name}: ")] == [
            f"{tmp_path / name}: Tag data larger than file. Skipping tag 270 (PIL's warning while reading it)"]
    assert not [w for w in recwarn if "PIL" in w.filename], [str(w.message) for w in recwarn]
    # also where the damaged block turns the image (its orientation tag read), relative names as absolute ones
    ifd = (struct.pack(">IH", 8, 2) + struct.pack(">HHII", 0x010E, 2, 80, 0x7FFF) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
           + struct.pack(">I", 0))
    (tmp_path / "turned").mkdir()
    Image.fromarray(scene(3)).save(tmp_path / "turned" / "c.jpg", exif=b"Exif\0\0MM\0*" + ifd)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="alps_client"):
        (turned,), _ = discover_inputs("turned", InputConfig())
        assert load_item(turned).rgb.shape == (*SIZE[::-1], 3)
    assert [record.getMessage() for record in caplog.records if "c.jpg" in record.getMessage()] == [
        f"{tmp_path / 'turned' / 'c.jpg'}: Tag data larger than file. Skipping tag 270 (PIL's warning while reading it)"]
    assert not [w for w in recwarn if "PIL" in w.filename], [str(w.message) for w in recwarn]
    # read in several threads at once (as a run reads them), each warning names its own file: the first way of
    # doing it named another thread's file, and could leave every later warning of the process unshown (review)
    many = tmp_path / "many"
    many.mkdir()
    for k in range(12):
        write_damaged_exif_jpeg(many / f"m{k:02d}.jpg", scene(k))
    items, _ = discover_inputs(many, InputConfig())
    monkeypatch.setattr("alps_client.io.readers._PIL_WARNINGS_SAID", set())  # said at discovery: said again
    caplog.clear()
    with caplog.at_level("WARNING", logger="alps_client"), ThreadPoolExecutor(6) as pool:
        assert len(list(pool.map(load_item, items * 3))) == 36
    assert sorted(record.getMessage() for record in caplog.records) == [
        f"{many / f'm{k:02d}.jpg'}: Tag data larger than file. Skipping tag 270 (PIL's warning while reading it)"
        for k in range(12)]
    with pytest.warns(UserWarning, match="still shown"):  # other warnings as before
        warnings.warn("still shown", UserWarning, stacklevel=1)


def test_every_output_name_is_unique_and_fits_a_file_name(tmp_path):
    """Inputs named like another input's tile or slice, like another's name with its extension kept, alike but for
    case, or alike at the end of a long tree, each get names of their own; every name fits a file name."""
    def save(relative: str, size: tuple[int, int] = (40, 48)) -> None:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_shapes_image(len(relative), size)).save(tmp_path / relative)

    save("big.png", (300, 300))  # cut into tiles big__x0_y0, big__x44_y0, ...
    save("big__x0_y0.png")
    write_nifti(tmp_path / "vol.nii.gz")  # slices vol__z0001, vol__z0002, vol__z0004
    save("vol__z0001.png")
    save('a"png.jpg')  # a_png: the name a.png would get beside a.jpg
    save("a.jpg")
    save("a.png")
    save("A.bmp")  # sorted first: A, and a.jpg then keeps its extension
    save("e\u0301t\u00e9.png")  # été with its accents as macOS writes them (NFD) and as Linux does (NFC)
    save("\u00e9t\u00e9.png")
    for top in ("x" * 120, "z" * 120):  # trees that end alike, each joined name well over 255 bytes
        save(f"{top}/{'ÿ' * 60}/same.png")
    items, errors = discover_inputs(tmp_path, InputConfig(tile=256, overlap=0))
    assert not errors
    stems = {i.source.removeprefix(f"{tmp_path}/"): i.stem for i in items if i.kind == "image"}
    def key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    assert len({key(i.stem) for i in items}) == len(items)
    assert not {key(i.scene) for i in items if i.kind != "image"} & {key(s) for s in stems.values()}
    assert {i.stem for i in items if i.scene == "big"} == {"big__x0_y0", "big__x44_y0", "big__x0_y44", "big__x44_y44"}
    assert {i.stem for i in items if i.scene == "vol"} == {"vol__z0001", "vol__z0002", "vol__z0004"}
    assert describe_items(items) == f"{len(items)} image(s) (4 tiles of 1 scene, 3 slices of 1 volume, " \
                                    f"{len(items) - 7} whole images)"  # was "{len(items)} image(s)": files or tiles?
    assert describe_items([i for i in items if i.kind == "image"]) == f"{len(items) - 7} image(s)"
    assert stems["big__x0_y0.png"] == "big__x0_y0_png" and stems["vol__z0001.png"] == "vol__z0001_png"
    assert [stems[n] for n in ('a"png.jpg', "a.jpg", "a.png", "A.bmp")] == ["a_png", "a_jpg", "a_png_2", "A"]
    assert [stems[n] for n in ("e\u0301t\u00e9.png", "\u00e9t\u00e9.png")] == ["e\u0301t\u00e9", "\u00e9t\u00e9_png"]
    long = [stem for name, stem in stems.items() if name.endswith("same.png")]
    assert len(set(long)) == 2 and all(s.endswith("ÿÿ__same") for s in long)
    assert max(len(i.stem.encode()) for i in items) <= 200  # room for a tile's name and a temporary file's
    assert discover_inputs(tmp_path, InputConfig(tile=256, overlap=0)) == (items, errors)  # same names every run
    earlier = {"a.jpg": "a", "A.bmp": "A_bmp", "a.png": "A", "big.png": "../big", "e\u0301t\u00e9.png": ".hidden"}
    kept = discover_inputs(tmp_path, InputConfig(tile=256, overlap=0), earlier_names=earlier)[0]
    renamed = {i.source.removeprefix(f"{tmp_path}/"): i.stem for i in kept if i.kind == "image"}
    # each earlier name once in any case (a.png's A is a.jpg's a); names no run gives (../big, .hidden) are not kept
    assert [renamed[n] for n in ("a.jpg", "A.bmp", "a.png")] == ["a", "A_bmp", "a_png_2"]
    assert {i.stem for i in kept if i.scene == "big"} == {i.stem for i in items if i.scene == "big"}
    assert renamed["e\u0301t\u00e9.png"] == "e\u0301t\u00e9" and len({key(i.stem) for i in kept}) == len(kept)


def test_a_slice_records_the_type_its_volume_stores(tmp_path):
    """Shards said float32 (what alps decodes a volume to) for every volume, an int16 CT's too (medical audit)."""
    import nibabel

    ct = np.full((32, 32, 3), -1024, np.int16)
    ct[8:24, 8:24] = 40
    nibabel.save(nibabel.Nifti1Image(ct, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    write_nifti(tmp_path / "float.nii.gz")
    items, errors = discover_inputs(tmp_path, InputConfig())
    assert not errors
    stored = {item.scene: load_item(item).extra["dtype"] for item in items}
    assert stored == {"ct": "int16", "float": "float32"}


def test_a_link_to_what_the_dataset_holds_anyway_is_not_a_second_image(tmp_path):
    """`a_link -> real/` sorted before `real/`: its alias took the images and their names, and `real/` was skipped
    unsaid; `link.png -> y.png` labelled one image twice (perhaps once in train, once in val). Links to what lies
    elsewhere, or in a hidden folder the walk leaves out, are data and followed, a file reached by several once."""
    root = tmp_path / "ds"
    for relative in ("real/x.png", "y.png", ".hidden/h.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene(0)).save(root / relative)
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(scene(1)).save(tmp_path / "elsewhere" / "e.png")
    (root / "a_link").symlink_to(root / "real")
    (root / "link.png").symlink_to("y.png")
    (root / "outside").symlink_to(tmp_path / "elsewhere")
    (root / "shown").symlink_to(root / ".hidden")
    (root / "loop").symlink_to(root)
    Image.fromarray(scene(2)).save(root / "camera_raw_name", format="PNG")  # not listed itself: its link is the image
    (root / "named.png").symlink_to("camera_raw_name")
    # Links from two places to one file outside: labelled twice, once in train and once in val
    (root / "z1.png").symlink_to(tmp_path / "elsewhere" / "e.png")
    (root / "z2.png").symlink_to(tmp_path / "elsewhere" / "e.png")
    (root / "z_outside_again").symlink_to(tmp_path / "elsewhere")
    items, errors = discover_inputs(root)
    assert not errors
    assert sorted((i.stem, i.source) for i in items) == [
        ("named", str(root / "named.png")), ("outside__e", str(root / "outside" / "e.png")),
        ("real__x", str(root / "real" / "x.png")), ("shown__h", str(root / "shown" / "h.png")),
        ("y", str(root / "y.png"))]


def test_hard_links_earlier_outputs_and_links_into_out_are_no_second_image(tmp_path):
    """A hard link was labelled twice (perhaps once in train, once in val); an earlier alps output inside the
    dataset whose .alps was deleted had its img_dir copies, label maps and previews labelled as inputs; a link into
    the run's own OUT labelled its copies (an image in train, its copy in val) and the write replaced them."""
    import json
    import os

    from alps_client.io.publish import DATASET_FORMAT

    root, out = tmp_path / "ds", tmp_path / "out"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(scene(0 if name == "a.png" else 1)).save(root / name)
    os.link(root / "a.png", root / "hard.png")
    earlier = root / "labels2"  # an earlier run's OUT, its .alps deleted to save space
    (earlier / "img_dir" / "train").mkdir(parents=True)
    Image.fromarray(scene(0)).save(earlier / "img_dir" / "train" / "a.png")
    (earlier / "manifest.json").write_text(json.dumps({"format": DATASET_FORMAT}))
    (out / "img_dir" / "val").mkdir(parents=True)
    Image.fromarray(scene(1)).save(out / "img_dir" / "val" / "b.png")
    (root / "own_imgs").symlink_to(out / "img_dir")
    (root / "own_b.png").symlink_to(out / "img_dir" / "val" / "b.png")
    left_out = []
    items, errors = discover_inputs(root, out=out, on_left_out=left_out.append)
    assert not errors and sorted(item.stem for item in items) == ["a", "b"]
    assert sorted(path.name for path in left_out) == ["labels2", "own_b.png", "own_imgs"]
    (out / "mine").mkdir()  # a folder of the user's own in OUT, beside the outputs, is a dataset like any other
    Image.fromarray(scene(2)).save(out / "mine" / "c.png")
    items, errors = discover_inputs(out / "mine", out=out)
    assert not errors and [item.stem for item in items] == ["c"]


def test_a_nifti_header_declaring_more_voxels_than_its_file_holds_is_rejected_and_memory_is_never_a_bad_input(
        tmp_path, monkeypatch):
    """A 1.3 KB .nii declaring 1000^3 voxels made alps allocate 1 GB before rejecting it (4000^3: "MemoryError"
    given as the file's fault): the header is checked against the file first. Running out of memory on a real
    volume is the machine's failure, retried and then ending the run, never a rejected input."""
    import nibabel

    from alps_client.io import volumes

    path = tmp_path / "lying.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(path))
    header = bytearray(path.read_bytes())
    header[42:48] = np.array([1000, 1000, 1000], "<i2").tobytes()  # dim[1..3] of the NIfTI-1 header
    path.write_bytes(bytes(header))
    volumes._volume.cache_clear()
    with pytest.raises(InputImageError, match=rf"declares 1000 x 1000 x 1000 voxels.*holds {path.stat().st_size} "):
        load_item(InputItem(str(path), "lying__z0000", kind="slice", scene="lying", slice_index=0))
    # a compressed file's size says nothing of its voxels: its stream is counted (4000^3 was a MemoryError each run)
    header[42:48] = np.array([4000, 4000, 4000], "<i2").tobytes()
    compressed = tmp_path / "lying.nii.gz"
    compressed.write_bytes(gzip.compress(bytes(header)))
    with pytest.raises(InputImageError, match=rf"declares 4000 x 4000 x 4000 voxels.*decompressed holds {len(header)} "):
        load_item(InputItem(str(compressed), "lying__z0000", kind="slice", scene="lying", slice_index=0))
    compressed.write_bytes(b"\x1f\x8b" + bytes(20))
    with pytest.raises(InputImageError, match=r"lying\.nii\.gz.*not a readable NIfTI"):
        load_item(InputItem(str(compressed), "lying__z0000", kind="slice", scene="lying", slice_index=0))
    cut = tmp_path / "cut.nii.gz"
    write_nifti(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    with pytest.raises(InputImageError, match=r"cut\.nii\.gz.*EOFError: Compressed file ended before the end-of-stream "
                                              r"marker was reached\)$"):  # gzip's whole reason, never cut mid-word
        load_item(InputItem(str(cut), "cut__z0000", kind="slice", scene="cut", slice_index=0))
    assert shortened("a reason " * 20, 40) == "a reason a reason a reason a reason a…"
    real = tmp_path / "real.nii.gz"
    write_nifti(real)

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError

    monkeypatch.setattr(nibabel.nifti1.Nifti1Image, "get_fdata", out_of_memory)
    volumes._volume.cache_clear()
    with pytest.raises(MemoryError):
        load_item(InputItem(str(real), "real__z0001", kind="slice", scene="real", slice_index=1))


def test_a_folder_that_cannot_be_listed_is_rejected_by_name(tmp_path):
    """A folder without read or execute permission was skipped unsaid: its images left out of the dataset. Root
    reads it anyway, so as root the discovery runs without the capabilities that bypass permissions."""
    import shlex
    import shutil

    for relative in ("open/a.png", "locked/b.png"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        Image.fromarray(make_shapes_image(1, (40, 48))).save(tmp_path / relative)
    script = ("import json, sys\nfrom alps_client.io.discovery import discover_inputs\n"
              "from alps_client.config import PipelineConfig\nfrom alps_client.runs.plan import check_request\n"
              "items, errors = discover_inputs(sys.argv[1])\n"
              "try:\n    check_request(sys.argv[1] + '/locked', PipelineConfig())\n"
              "except Exception as err:\n    refused = str(err)\n"
              "print(json.dumps([[i.relative for i in items], [[e.path, e.reason] for e in errors], refused]))")
    command = [sys.executable, "-c", script, str(tmp_path)]
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("root without capsh: permissions cannot be made to apply")
        command = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(command)]
    (tmp_path / "locked").chmod(0)
    try:
        found = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    finally:
        (tmp_path / "locked").chmod(0o755)
    items, errors, refused = json.loads(found.stdout)
    assert items == ["open/a.png"]
    assert errors == [[str(tmp_path / "locked"),
                       "folder cannot be listed (Permission denied): its files are not labelled"]]
    assert refused.endswith(f"1 folder(s) not searched, e.g. {tmp_path}/locked: folder cannot be listed "
                            "(Permission denied): its files are not labelled)")  # given as the dataset


def test_only_the_first_page_or_volume_is_labelled_and_that_is_said(tmp_path):
    """A 3-page TIFF is one image, its first page; a 4-D NIfTI of 2 volumes gives the slices of its first."""
    import nibabel

    planes = [Image.fromarray(make_shapes_image(seed, (40, 48))) for seed in range(3)]
    planes[0].save(tmp_path / "stack.tif", save_all=True, append_images=planes[1:])
    series = np.zeros((32, 36, 3, 2), np.float32)
    series[8:20, 8:20, 1, 0] = 100.0  # the first volume: one non-empty slice
    series[..., 1] = 50.0  # the second: every slice non-empty
    nibabel.save(nibabel.Nifti1Image(series, np.eye(4)), str(tmp_path / "series.nii.gz"))
    said = []
    items, errors = discover_inputs(tmp_path, InputConfig(), on_pages=lambda *counted: said.append(counted))
    assert not errors and said == [(str(tmp_path / "series.nii.gz"), 2), (str(tmp_path / "stack.tif"), 3)]
    assert [(i.stem, i.kind) for i in items] == [("series__z0001", "slice"), ("stack", "image")]
    np.testing.assert_array_equal(load_item(items[1]).rgb, np.asarray(planes[0]))


def test_geotiff_nodata_is_where_every_band_read_is_nodata_whatever_declares_it(tmp_path):
    """The mask was band 1's alone, and read only for a nodata value or 2 or 4 bands: an RGB ortho with nodata 0
    lost every pure green, blue or dark pixel (their red is 0); --bands 2,3,4 kept band 1's nodata and not its
    own; a GDAL mask band (JPEG-compressed orthos, COGs) was ignored and its nodata labelled."""
    rgb = np.full((3, 60, 80), 90, np.uint8)
    rgb[:, 10:30, 10:30] = np.array([0, 200, 0])[:, None, None]  # pure green: red is the nodata value
    rgb[:, 30:40, 40:60] = np.array([0, 0, 220])[:, None, None]
    rgb[:, :, 70:] = 0  # the collar: every band nodata
    four = np.full((4, 60, 80), 700, np.uint16)
    four[0, :20] = 0  # band 1's nodata, not read with --bands 2,3,4
    four[1:, 50:] = 0  # bands 2-4's nodata
    four[1:, 25:35, 5:15] = np.arange(300, 400, dtype=np.uint16).reshape(10, 10)  # something to stretch
    masked = np.full((60, 80), True)
    masked[45:, :] = False
    cases = {"rgb.tif": (rgb, 0, None, InputConfig(), np.s_[:, 70:]),
             "four.tif": (four, 0, None, InputConfig(bands=(2, 3, 4)), np.s_[50:, :]),
             "mask_band.tif": (rgb[:, :, :60].copy(), None, masked[:, :60], InputConfig(), np.s_[45:, :])}
    for name, (bands, nodata, mask, config, invalid) in cases.items():
        write_geotiff(tmp_path / name, bands, "EPSG:32633", (500000.0, 0.5, 4600000.0), nodata, mask)
        (item,), _ = discover_inputs(tmp_path / name, config)
        expected = np.ones(bands.shape[1:], bool)
        expected[invalid] = False
        np.testing.assert_array_equal(load_item(item, config).valid, expected, err_msg=name)
    tiled = InputConfig(bands=(2, 3, 4), tile=64, overlap=0)  # the scene's stretch is read apart from the tiles'
    whole = load_item(discover_inputs(tmp_path / "four.tif", cases["four.tif"][3])[0][0], cases["four.tif"][3])
    for tile in discover_inputs(tmp_path / "four.tif", tiled)[0]:
        x0, y0, x1, y1 = tile.window
        np.testing.assert_array_equal(load_item(tile, tiled).rgb, whole.rgb[y0:y1, x0:x1])
    write_geotiff(tmp_path / "plain.tif", rgb, "EPSG:32633", (500000.0, 0.5, 4600000.0))
    (item,), _ = discover_inputs(tmp_path / "plain.tif")
    assert load_item(item).valid is None  # no nodata declared: every pixel holds data


def test_stretch_is_percentile_based():
    data = np.linspace(0, 4000, 10000).reshape(100, 100).astype(np.uint16)
    out, (lo, hi) = stretch_to_uint8(data, None, (2.0, 98.0))
    assert lo == pytest.approx(80, abs=1) and hi == pytest.approx(3920, abs=1)
    assert out.min() == 0 and out.max() == 255


def test_a_stretch_whose_percentiles_meet_spans_the_values_instead(tmp_path):
    """A 16-bit field at 100 with three cells at 1500, 3000 and 5000 (1 % of the pixels: fluorescence, lesions):
    its 2nd and 98th percentiles are both 100, and a range of zero width made the cells one white."""
    from PIL import Image

    data = np.full((100, 100), 100, np.uint16)
    for (y, x), value in zip(((20, 20), (50, 70), (80, 30)), (1500, 3000, 5000), strict=True):
        data[y - 2:y + 2, x - 2:x + 2] = value
    Image.fromarray(data).save(tmp_path / "cells.png")
    (item,), _ = discover_inputs(tmp_path / "cells.png")
    loaded = load_item(item)
    assert loaded.extra["stretch"] == [100.0, 5000.0]
    cells = [int(loaded.rgb[y, x, 0]) for y, x in ((20, 20), (50, 70), (80, 30))]
    assert loaded.rgb[0, 0, 0] == 0 and cells == sorted(set(cells)) and cells[-1] == 255
    flat, (lo, hi) = stretch_to_uint8(np.full((8, 8), 7.5, np.float32), None, (2.0, 98.0))
    assert (lo, hi) == (7.5, 8.5) and not flat.any()  # one value: black, as before
    floats = np.array([[0.0, 50.0, 100.0, np.inf, -np.inf]], np.float32)  # infinities: the ends of the window
    greys, _ = stretch_to_uint8(floats, np.isfinite(floats), (2.0, 98.0))
    assert greys[0, 3] == 255 and greys[0, 4] == 0


def test_tile_grid_and_stitch():
    windows = tile_windows(2000, 1500, 896, 384)
    assert windows[0] == (0, 0, 896, 896) and windows[-1] == (604, 1104, 1500, 2000)
    owned = stitch_windows(2000, 1500, 896, 384)
    cover = np.zeros((2000, 1500), int)
    for x0, y0, x1, y1 in owned.values():
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()  # owned regions tile the scene exactly
    tiles = [((x0, y0, x1, y1), np.full((y1 - y0, x1 - x0), k, np.uint8)) for k, (x0, y0, x1, y1) in enumerate(windows)]
    stitched = stitch_scene((2000, 1500), 896, 384, tiles)
    assert stitched[0, 0] == 0 and stitched[-1, -1] == len(windows) - 1 and (stitched != 255).all()


def test_the_default_overlap_is_isaids_share_of_the_tile(capsys):
    """A fixed 384 px was 75 % of a 512-px tile: 1,936 tiles for a 6000-px Potsdam scene instead of 400 (4.8x the
    work, unsaid), and any --tile under 385 px was refused for an --overlap the user never gave."""
    from flows.cli import main as alps

    assert InputConfig().overlap == 384 and InputConfig(tile=896).overlap == 384  # iSAID's; fingerprints as before
    assert InputConfig(tile=512).overlap == 219 and InputConfig(tile=256).overlap == 110
    assert InputConfig(tile=512, overlap=0).overlap == 0  # given: kept
    assert len(tile_windows(6000, 6000, 512, InputConfig(tile=512).overlap)) == 400
    assert alps(["run", "/nonexistent", "--out", "/nonexistent-out", "--tile", "256"]) == 2
    assert "overlap" not in capsys.readouterr().err  # refused for the missing dataset, not for its tiles


def decode(annotation: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = annotation["segmentation"]
    return mask_utils.decode({**seg, "counts": seg["counts"].encode()}).astype(bool)


def test_odd_dataset_through_the_flow(odd, stand_in_repo, prefect_server, tmp_path):
    root, expect = odd
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(root), "--out", str(out), "--model-repository", str(stand_in_repo),
         "--points-per-side", "8", "--n-clusters", "3", "--write-nifti-labels", "--vector", "geojson", "--no-progress"],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=cli_env(tmp_path / "ph", prefect_server),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = {json.loads(line)["path"]: json.loads(line)["reason"] for line in (out / "errors.jsonl").read_text().splitlines()}
    for name, expectation in expect.items():
        if expectation != "ok":
            assert expectation in errors[printable(str(root / name))], (name, errors)
    assert "Warning" not in result.stderr, result.stderr  # no library warning: a plain TIFF, infinities handled
    for name in ("damaged_exif_a.jpg", "damaged_exif_b.jpg"):  # PIL's warning said with the file, once each
        assert len(re.findall(rf"^alps: {re.escape(str(root / name))}: .*\(PIL's warning", result.stderr,
                              re.MULTILINE)) == 1, result.stderr
    assert str(root / "notes \\xe9t\\xe9.png") in errors  # a name that is not UTF-8 is said with its bytes
    said = result.stdout + result.stderr  # a newline in a name is said escaped, within its line
    assert f"{root}/two\\x0alines.png: not an image" in said and not re.search(r"^lines\.png", said, re.MULTILINE)
    assert f"2 input(s) hold several pages or volumes (a TIFF stack's planes or pyramid levels, a 4-D NIfTI's " \
           f"volumes, an animated PNG's or WebP's frames): only the first of each is labelled, e.g. " \
           f"{root / 'stack.tif'} (3)" in result.stderr
    assert "notes \\xe9t\\xe9.png" in (out / "report" / "index.html").read_text()
    sources = {f["properties"]["source"] for p in (out / "vectors").glob("*.geojson")
               for f in json.loads(p.read_text())["features"]}
    assert str(root / "caf\\xe9 latin-1.png") in sources
    labelled = {p.stem for p in (out / "ann_dir").glob("*/*.png")}
    assert len(labelled) == sum(v == "ok" for v in expect.values()) - 1 + 3  # the volume gives 3 slices
    assert {"grey", "rgba", "palette", "geo_rgb", "multiband", "volume__z0001", "xray__z0000", "Case", "case_jpg",
            "caf_xe9 latin-1"} <= labelled
    assert any(stem.endswith("T32TQM_20240611T103629_TCI_10m") for stem in labelled)  # a stem cut to fit
    # every label map leads back to its file (a volume's slices to the volume), also where names were changed
    recorded = json.loads((out / "manifest.json").read_text())["sources"]
    assert set(recorded) == {re.sub(r"__z\d{4}$", "", stem) for stem in labelled}
    assert all((root / relative).is_file() for relative in recorded.values())
    assert (recorded["Case"], recorded["case_jpg"], recorded["volume"]) == ("Case.png", "case.jpg", "volume.nii.gz")
    assert recorded["caf_xe9 latin-1"] == os.fsdecode(b"caf\xe9 latin-1.png")
    # for JSON tools other than Python's (jq read the lone surrogate as U+FFFD: no such file), its bytes
    assert json.loads((out / "manifest.json").read_text())["sources_not_utf8"] == {
        "caf_xe9 latin-1": "caf%E9%20latin-1.png"}
    assert np.asarray(Image.open(next((out / "ann_dir").glob("*/scanline.png")))).shape == (1, 18 * SIZE[1])
    rotated = next((out / "ann_dir").glob("*/exif_rotated.png"))
    assert np.asarray(Image.open(rotated)).shape == SIZE[::-1]
    with Image.open(next((out / "img_dir").glob("*/exif_rotated.*"))) as copy:  # its pixels as labelled, not the
        assert np.asarray(copy).shape[:2] == SIZE[::-1]  # file as stored (mutation audit)
    rgba = np.asarray(Image.open(next((out / "ann_dir").glob("*/rgba.png"))))
    assert (rgba[:, :30] == 255).all()  # transparent pixels stay unlabelled
    rgb48 = np.asarray(Image.open(next((out / "ann_dir").glob("*/rgb48.png"))))
    assert (rgb48 != 255).any()  # was all 255: read as 8-bit values up to 15
    with Image.open(next((out / "img_dir").glob("*/rgb48.*"))) as copy:  # the 8-bit pixels labelled, not the file
        assert copy.mode == "RGB" and np.asarray(copy).max() == 255
    with Image.open(next((out / "img_dir").glob("*/walk_cycle.png"))) as copy:  # the frame labelled, not its others
        assert getattr(copy, "n_frames", 1) == 1
    nodata = np.asarray(Image.open(next((out / "ann_dir").glob("*/geo_nodata.png"))))
    assert (nodata[60:] == 255).all() and (nodata[:60] != 255).any()
    floats = np.asarray(Image.open(next((out / "ann_dir").glob("*/float_nan.png"))))
    assert (floats[:30] == 255).all()  # NaN and infinity: never labelled
    coco = assert_coco_consistent(out)  # boxes and areas of clipped masks are those of their RLE
    for stem, region in (("rgba", np.s_[:, :30]), ("geo_nodata", np.s_[60:, :])):
        assert coco[stem] and not any(decode(a)[region].any() for a in coco[stem])
    import nibabel
    import rasterio

    with rasterio.open(out / "geo" / "geo_rgb.tif") as src:
        assert src.crs.to_epsg() == 32633 and src.transform.c == 500000.0
    with rasterio.open(out / "geo" / "sentinel2_tci.tif") as src:  # a JPEG 2000's labels overlay it in its CRS
        assert src.crs.to_epsg() == 32632 and src.transform.c == 600000.0
    vol = nibabel.load(str(out / "volumes" / "volume.nii.gz"))
    assert vol.shape == (64, 72, 6) and np.allclose(vol.affine, np.diag([0.8, 0.8, 2.5, 1.0]))
    assert (np.asarray(vol.dataobj)[..., 0] == 255).all()
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after  # inputs are never modified
    assert not any(p.name.startswith(".") for p in root.rglob("*"))  # nothing written beside the inputs


def test_large_scene_is_tiled_and_stitched_with_bounded_memory(tmp_path):
    """A 12000 x 12000 RGB GeoTIFF (432 MB of pixels) read tile by tile and stitched: no read takes more than a
    tile's pixels, and the arrays alive at once stay far below one band of the scene."""
    script = textwrap.dedent(f"""
        import tracemalloc
        import numpy as np, rasterio
        from pathlib import Path
        from rasterio.windows import Window
        from rasterio.transform import from_origin
        from alps_client.config import InputConfig
        from alps_client.io.discovery import discover_inputs
        from alps_client.io.readers import load_item
        from alps_client.io.geotiff import LabelGeoTiff
        from alps_client.io.tiling import stitch_windows
        root = Path({str(tmp_path)!r})
        largest = [0, 0]  # the most pixels one read returned, and how many reads (alps's, and the corner's below)
        for method in ("read", "read_masks"):
            def counted(self, *args, _read=getattr(rasterio.io.DatasetReader, method), **kwargs):
                data = _read(self, *args, **kwargs)
                largest[:] = [max(largest[0], data.shape[-2] * data.shape[-1]), largest[1] + 1]
                return data
            setattr(rasterio.io.DatasetReader, method, counted)
        src = root / "scene" / "big.tif"; src.parent.mkdir()
        n = 12000
        with rasterio.open(src, "w", driver="GTiff", height=n, width=n, count=3, dtype="uint8", tiled=True,
                           blockxsize=512, blockysize=512, compress="deflate", crs="EPSG:32633",
                           transform=from_origin(0, n, 1, 1)) as dst:
            for y in range(0, n, 1024):
                h = min(1024, n - y)
                block = np.zeros((3, h, n), np.uint8); block[0] = (y // 1024) * 20
                dst.write(block, window=Window(0, y, n, h))
        tracemalloc.start()  # numpy's arrays are traced: the scene's or the stitched map's 144 MB would show
        items, errors = discover_inputs(root / "scene", InputConfig(tile=896, overlap=384))
        assert not errors and all(i.kind == "tile" for i in items), errors
        for item in items[:: max(1, len(items) // 6)]:
            tile = load_item(item, InputConfig(tile=896, overlap=384))
            assert tile.rgb.shape[:2] == (item.window[3] - item.window[1], item.window[2] - item.window[0])
            assert tile.geo is not None
        owned = stitch_windows(n, n, 896, 384)
        tif = LabelGeoTiff(root / "stitched.tif", (n, n), None)
        for k, w in enumerate(owned.values()):
            tif.write(w[0], w[1], np.full((w[3] - w[1], w[2] - w[0]), k % 250, np.uint8))
        tif.close()
        with rasterio.open(root / "stitched.tif") as s:
            corner = s.read(1, window=Window(n - 1, n - 1, 1, 1))[0, 0]
        # VmHWM: this process's peak RSS (ru_maxrss would include the pytest parent's peak, kept across exec)
        hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        traced_peak = tracemalloc.get_traced_memory()[1]
        print(len(items), int(corner), largest[0], largest[1], traced_peak >> 20, hwm // 1024)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    n_tiles, corner, largest_read, reads, traced_mib, peak_mib = (int(v) for v in result.stdout.split())
    print(f"large scene: {n_tiles} tiles, {reads} reads of at most {largest_read} px each, arrays at most "
          f"{traced_mib} MiB at once, peak RSS {peak_mib} MiB")
    assert n_tiles == 23 * 23 and corner == (n_tiles - 1) % 250
    # Never whole (its memory in MiB is bench/'s to measure, not a limit here): no read returns more than a tile's
    # pixels, and the arrays alive at once never approach one band of the scene (144 MB), read or stitched
    assert reads > 6 and largest_read <= 896 * 896, (largest_read, reads)
    assert traced_mib < 144 // 4, traced_mib


def test_tiles_of_a_16_bit_scene_share_one_stretch(tmp_path):
    """Per-tile stretching would give each tile its own colours; the scene's range is used for all of them."""
    data = np.zeros((1, 600, 1000), np.uint16)
    data[0, :, :500] = np.linspace(100, 1100, 500, dtype=np.uint16)[None, :]  # dark left half
    data[0, :, 500:] = np.linspace(3000, 9000, 500, dtype=np.uint16)[None, :]  # bright right half
    data[0, :, 480:520] = 2000  # a stripe both tiles see
    write_geotiff(tmp_path / "scene.tif", data, "EPSG:32633", (0.0, 1.0, 600.0))
    config = InputConfig(tile=512, overlap=24)
    items, errors = discover_inputs(tmp_path, config)
    assert not errors and [i.window for i in items] == [(0, 0, 512, 512), (488, 0, 1000, 512), (0, 88, 512, 600), (488, 88, 1000, 600)]
    left, right = (load_item(i, config) for i in items[:2])
    assert left.extra["stretch"] == right.extra["stretch"]
    assert left.rgb[0, 500, 0] == right.rgb[0, 12, 0]  # the shared stripe has one colour
    assert left.geo["transform"][2] == 0.0 and right.geo["transform"][2] == 488.0  # window transforms


def test_huge_plain_image_is_refused_with_the_way_out(tmp_path):
    """A PNG header announcing 30000 x 30000 px: PIL would decode it whole for every tile, so it is refused."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    items, errors = discover_inputs(tmp_path, InputConfig(tile=896))
    assert not items and "tiled GeoTIFF" in errors[0].reason and "30000x30000" in errors[0].reason
    items, errors = discover_inputs(tmp_path / "huge.png", InputConfig())
    assert not items and "too large" in errors[0].reason
    bmp = tmp_path / "negative_width.bmp"  # its width -50 read unsigned: "4294967246x40, too large" was said
    Image.fromarray(make_shapes_image(1, (40, 50))).save(bmp)
    bmp.write_bytes(bmp.read_bytes()[:18] + struct.pack("<i", -50) + bmp.read_bytes()[22:])
    items, errors = discover_inputs(bmp, InputConfig())
    assert not items and errors[0].reason == "its header declares 4294967246x40 pixels, more than any image holds: " \
                                             "a corrupt header"


def test_tiled_geotiff_scene_through_the_flow_with_stitch(stand_in_repo, prefect_server, tmp_path):
    """--tile/--overlap/--stitch end to end: tiles labelled as images, one stitched GeoTIFF per scene. The last
    column of tiles is wholly nodata, so left out: `alps evaluate` assembled the scene from the tiles there were,
    too narrow for its ground truth ("size differs"); it now takes the scene's size as the run recorded it."""
    import rasterio

    from alps_client.evaluate import evaluate_dataset
    from alps_client.synthetic import make_scene

    rgb, gt = make_scene(11, (300, 600), n_classes=4)
    rgb = np.maximum(rgb, 1)  # 0 is the nodata value
    rgb[:, 344:] = 0  # the tiles at x 344 hold nodata alone
    (tmp_path / "data").mkdir()
    write_geotiff(tmp_path / "data" / "scene.tif", rgb.transpose(2, 0, 1), "EPSG:32633", (400000.0, 1.0, 5000000.0),
                  nodata=0)
    (tmp_path / "data" / "bad.png").write_bytes(b"")
    env = cli_env(tmp_path / "ph", prefect_server)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(tmp_path / "data"), "--out", str(out), "--model-repository",
         str(stand_in_repo), "--points-per-side", "6", "--n-clusters", "3", "--tile", "256", "--overlap", "64",
         "--stitch", "--no-progress"],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    windows = [w for w in tile_windows(300, 600, 256, 64) if w[0] < 344]
    assert len(windows) == 4 and "2 tiles wholly nodata, left out" in result.stdout + result.stderr
    assert "val holds 0 of the 4 images (0%; --val-fraction 0.3)" in result.stdout + result.stderr  # one scene
    stems = {p.stem for p in (out / "ann_dir").glob("*/*.png")}
    assert stems == {f"scene__x{x0}_y{y0}" for x0, y0, _, _ in windows}
    assert json.loads((out / "manifest.json").read_text())["scene_sizes"] == {"scene": [300, 600]}
    assert (out / "errors.jsonl").read_text().count("\n") == 1  # one line per rejected file
    with rasterio.open(out / "stitched" / "scene.tif") as src:
        stitched = src.read(1)
        assert src.crs.to_epsg() == 32633 and src.transform.c == 400000.0 and stitched.shape == (300, 600)
    owned = stitch_windows(300, 600, 256, 64)
    for x0, y0, _, _ in windows:
        ox0, oy0, ox1, oy1 = owned[(x0, y0)]
        tile = np.asarray(Image.open(next((out / "ann_dir").glob(f"*/scene__x{x0}_y{y0}.png"))))
        np.testing.assert_array_equal(stitched[oy0:oy1, ox0:ox1], tile[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0])
    assert (stitched[:, owned[(344, 0)][0]:] == 255).all()
    assert np.array_equal(np.asarray(Image.open(out / "stitched" / "scene.png")), stitched)
    assert_coco_consistent(out)

    # The scene scored whole against its ground truth (nodata where the scene is): as its stitched label map is.
    truth = np.where(rgb[..., 0] > 0, gt + 1, 0).astype(np.uint8)
    (tmp_path / "gt").mkdir()
    write_geotiff(tmp_path / "gt" / "scene.tif", truth[None], "EPSG:32633", (400000.0, 1.0, 5000000.0), nodata=0)
    report = evaluate_dataset(out, tmp_path / "gt")
    (tmp_path / "whole" / "ann_dir" / "train").mkdir(parents=True)
    Image.fromarray(stitched).save(tmp_path / "whole" / "ann_dir" / "train" / "scene.png")
    whole = evaluate_dataset(tmp_path / "whole", tmp_path / "gt")
    assert report.n_images == 1 and report.missing_pseudo_labels == [] and report.ground_truth_nodata == [0.0]
    assert report.miou == whole.miou and report.coverage == whole.coverage and report.coverage > 0.1
    write_geotiff(tmp_path / "gt" / "scene.tif", truth[None, :, :500], "EPSG:32633", (400000.0, 1.0, 5000000.0),
                  nodata=0)  # ground truth of another size: the scene's, as recorded, is named
    with pytest.raises(AlpsError, match=r"500x300 px differs from the scene's 600x300 px \(as `alps run`"):
        evaluate_dataset(out, tmp_path / "gt")


def test_input_settings_no_input_uses_are_named_not_silently_ignored():
    from alps_client.config import InputConfig, PipelineConfig
    from alps_client.io.items import InputItem
    from alps_client.runs.plan import unused_input_settings

    asked = PipelineConfig(inputs=InputConfig(bands=(4, 3, 2), tile=512, stitch=True, write_nifti_labels=True,
                                              slice_axis=0))
    pngs = [InputItem("/d/a.png", "a"), InputItem("/d/b.PNG", "b")]
    lines = unused_input_settings(asked, pngs)
    assert [line.split(":")[0] for line in lines] == ["--bands 4,3,2", "--tile 512", "--write-nifti-labels",
                                                      "--slice-axis 0"]
    assert "--stitch has nothing to stitch" in lines[1]
    # --tile leaves NIfTI slices whole: it said "no input is larger than 512 pixels" of 600 px slices, or nothing
    # beside tiled rasters (option audit)
    volume = InputItem("/d/v.nii.gz", "v__z0001", "slice", "v", None, 1)
    assert unused_input_settings(asked, [volume])[1] == (
        "--tile 512: the inputs are NIfTI volumes, whose slices are labelled whole (--tile cuts images and rasters), "
        "so none is cut, and --stitch has nothing to stitch")
    used = [InputItem("/d/s.TIF", "s__x0_y0", "tile", "s", (0, 0, 512, 512)), volume]
    assert unused_input_settings(asked, used) == [
        "--tile 512: the NIfTI volumes' slices are labelled whole (--tile cuts images and rasters)"]
    assert unused_input_settings(dataclasses.replace(asked, inputs=dataclasses.replace(asked.inputs, tile=None)),
                                 used) == []
    assert unused_input_settings(PipelineConfig(), pngs) == []  # nothing asked, nothing said


def test_too_many_open_files_is_named_as_the_limit_it_is(tmp_path):
    """EMFILE (a low `ulimit -n`) was reported as "the disk or the network mount failed": the operator was sent to
    the wrong place. It stays a failure of the machinery (retried, never a bad input). A real limit: the reading
    process may open no other file."""
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    script = textwrap.dedent(f"""
        import os, resource
        from alps_client.config import InputConfig
        from alps_client.errors import InputReadError
        from alps_client.io.discovery import discover_inputs
        lowest_free = os.open(os.devnull, os.O_RDONLY)  # the limit bounds descriptor numbers, not their count:
        os.close(lowest_free)  # at the lowest free one, no file can be opened
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            discover_inputs({str(path)!r}, InputConfig())  # which reads the image's header
        except InputReadError as err:
            print(err)
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\(Too many open files\): too many files open, this process's limit of \d+ \(ulimit -n\): "
                     r"raise it; not the file", result.stdout), result.stdout


def test_nan_voxels_are_never_labelled_and_an_empty_volume_is_named(tmp_path):
    """NaN voxels (outside a registered brain) were stretched to black and labelled; a volume of zeros alone was left
    out unsaid ("13 slices of 5 volumes" for 6 readable ones), and alone refused as "no readable images"."""
    import nibabel

    vol = np.zeros((32, 36, 3), np.float32)
    vol[8:24, 8:28, 1] = 100.0
    vol[:10, :, :] = np.nan  # the first 10 rows of every slice
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(np.zeros((32, 36, 4), np.float32), np.eye(4)), str(tmp_path / "zeros.nii.gz"))
    items, errors = discover_inputs(tmp_path, InputConfig())
    assert [(e.path, e.reason) for e in errors] == [
        (str(tmp_path / "zeros.nii.gz"), ("every slice holds one value alone (0, NaN, a CT's padding: an empty "
                                          "volume): nothing to label"))]
    (item,) = items
    loaded = load_item(item)
    assert loaded.valid is not None and not loaded.valid[:10].any() and loaded.valid[10:].all()


def ct_phantom(outside: float = -1000.0) -> np.ndarray:
    """``(40, 40, 3) float32`` in Hounsfield units: air, a body of soft tissue (40 HU), bone (700 HU) inside."""
    vol = np.full((40, 40, 3), outside, np.float32)
    vol[6:34, 6:34] = 40.0
    vol[14:26, 14:26] = 700.0
    return vol


def test_a_fixed_intensity_window_gives_one_value_one_grey_in_every_input(tmp_path):
    """Each volume was stretched between its own 0.5-99.5 % percentiles: metal in one scan or a -3024 HU padding in
    another moved the grey of every tissue (soft tissue 157, 67 and 209 in three CTs), and its class with it.
    --intensity-window stretches every volume and every 16-bit or float raster between one window in the data's
    units; values outside it clip."""
    import nibabel

    metal = ct_phantom()
    metal[16:24, 16:24] = 3000.0  # an implant
    padded = ct_phantom()
    padded[:, :8] = -3024.0  # outside the scanner's field of view
    for name, vol in (("plain", ct_phantom()), ("metal", metal), ("padded", padded)):
        nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    raw = np.where(ct_phantom()[..., 0] == 40.0, 1040, 0).astype(np.uint16)  # HU + 1000, as some scanners store
    Image.fromarray(raw).save(tmp_path / "sixteen.png")

    def grey_of_soft_tissue(config: InputConfig) -> dict[str, int]:
        items, errors = discover_inputs(tmp_path, config)
        assert not errors
        loaded = {item.stem: load_item(item, config) for item in items if item.stem.endswith("z0001")}
        return {stem: int(image.rgb[8, 30, 0]) for stem, image in loaded.items()}

    own = grey_of_soft_tissue(InputConfig())
    assert len(set(own.values())) == 3  # one tissue, three greys: the defect
    fixed = InputConfig(intensity_window=(-1000.0, 1000.0))
    assert grey_of_soft_tissue(fixed) == dict.fromkeys(("plain__z0001", "metal__z0001", "padded__z0001"), 133)
    (item,) = [i for i in discover_inputs(tmp_path, fixed)[0] if i.stem == "padded__z0001"]
    loaded = load_item(item, fixed)
    assert loaded.extra["stretch"] == [-1000.0, 1000.0]
    assert loaded.rgb[:, :8].max() == 0 and loaded.rgb[20, 20, 0] == 217  # -3024 clips to 0; 700 HU: 216.75
    (png,) = [i for i in discover_inputs(tmp_path, fixed)[0] if i.stem == "sixteen"]
    sixteen = load_item(png, InputConfig(intensity_window=(0.0, 2000.0)))  # a 16-bit raster: the same rule
    assert sixteen.extra["stretch"] == [0.0, 2000.0] and int(sixteen.rgb[8, 30, 0]) == 133
    with pytest.raises(ValueError, match=r"intensity_window must be \(low, high\) with low < high, got \(1000"):
        InputConfig(intensity_window=(1000.0, -1000.0))


def test_slices_of_one_value_are_not_labelled(tmp_path):
    """Only all-zero slices were skipped: a CT's padding slices (every voxel -1024 HU), with no structure for SAM,
    got pseudo-labels, and a volume of padding alone was labelled whole. A slice whose finite voxels hold one value
    is empty, whatever the value."""
    import nibabel

    vol = np.full((40, 40, 7), -1024.0, np.float32)  # slices 0, 1 and 6: padding
    vol[..., 2:5] = ct_phantom()
    vol[..., 4] = np.nan  # no measurement
    vol[5:9, 5:9, 4] = 12.0  # one value among NaN: nothing to segment either
    vol[..., 5] = 0.0
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(np.full((40, 40, 4), -1024.0, np.float32), np.eye(4)),
                 str(tmp_path / "padding.nii.gz"))
    items, errors = discover_inputs(tmp_path, InputConfig())
    assert [item.stem for item in items] == ["ct__z0002", "ct__z0003"]
    assert [(e.path, e.reason) for e in errors] == [
        (str(tmp_path / "padding.nii.gz"), ("every slice holds one value alone (0, NaN, a CT's padding: an empty "
                                            "volume): nothing to label"))]


def test_bands_are_chosen_by_their_colour_interpretation(tmp_path):
    """A raster storing blue, green, red (or red, green, blue after a NIR band) was read as its first three bands:
    the colours swapped unsaid (``str(ColorInterp.blue)`` is ``'5'`` on Python 3.11, so no name ever matched)."""
    import rasterio
    from rasterio.enums import ColorInterp

    path = tmp_path / "nir_bgr.tif"
    values = {"nir": 90, "blue": 30, "green": 60, "red": 220}
    bands = np.stack([np.full((40, 48), v, np.uint8) for v in values.values()])
    write_geotiff(path, bands, "EPSG:32633", (0.0, 1.0, 40.0))
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.undefined, ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    (item,), errors = discover_inputs(path)
    loaded = load_item(item)
    assert not errors and loaded.extra["bands"] == [4, 3, 2]
    assert loaded.rgb[0, 0].tolist() == [220, 60, 30]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_pngs_of_16_bits_and_plain_tiffs_are_labelled_as_displayed_whole_and_in_tiles(tmp_path, orientation):
    """PNGs of 16 bits per colour channel and TIFFs go through GDAL, which ignores EXIF and TIFF orientation: a
    48-bit PNG of orientation 6 was labelled lying on its side (its label map 260x150 for a 150x260 image), one of
    orientation 3 upside down, unsaid; a TIFF too, where PIL and OpenCV (mmcv) show it turned. Each is read as its
    8-bit PNG twin of the same orientation is (through PIL), whole and in tiles. A georeferenced TIFF keeps its
    stored frame, which its transform describes (as GIS tools show it)."""
    from tests.inputs.make_files import write_png16

    pattern = np.zeros((120, 208), bool)
    pattern[12:100, 16:36] = pattern[80:100, 16:160] = True  # an L, off centre: any flip or turn shows
    rgb = np.repeat(pattern[:, :, None], 3, axis=2).astype(np.uint8) * 255
    write_png16(tmp_path / "wide.png", rgb.astype(np.uint16) * 257, orientation)
    Image.fromarray(rgb).save(tmp_path / "plain.tif", tiffinfo={0x0112: orientation})
    placed = {33550: (0.5, 0.5, 0.0), 33922: (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0)}  # pixel scale, tie point
    Image.fromarray(rgb).save(tmp_path / "placed.tif", tiffinfo={0x0112: orientation, **placed})
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "twin.png", exif=exif)
    items, errors = discover_inputs(tmp_path)
    read = {item.stem: load_item(item).rgb for item in items}
    expected = read["twin"]
    with Image.open(tmp_path / "twin.png") as twin:  # as PIL shows it
        assert np.array_equal(expected, np.asarray(ImageOps.exif_transpose(twin).convert("RGB")))
    assert not errors and expected.shape[:2] == ((208, 120) if orientation > 4 else (120, 208))
    assert np.array_equal(read["wide"], expected) and np.array_equal(read["plain"], expected)
    assert np.array_equal(read["placed"], rgb)
    config = InputConfig(tile=64, overlap=16)
    for name in ("wide.png", "plain.tif"):
        tiles, errors = discover_inputs(tmp_path / name, config)
        assert not errors and len(tiles) > 2
        for tile in tiles:
            x0, y0, x1, y1 = tile.window
            assert np.array_equal(load_item(tile, config).rgb, expected[y0:y1, x0:x1]), (name, tile.window)


def test_a_raster_whose_name_is_not_utf8_is_rejected_by_name(tmp_path):
    """A TIFF named in Latin-1 ended the run in a traceback inside rasterio (exit 1), or `--dry-run` in "'utf-8'
    codec can't encode character" (exit 2), naming no file; a PNG of such a name is labelled (GDAL takes UTF-8
    names alone)."""
    latin1 = os.fsencode(tmp_path) + b"/g\xe9o.tif"
    Image.fromarray(scene(0)).save(latin1)
    Image.fromarray(scene(1)).save(os.fsencode(tmp_path) + b"/caf\xe9.png")
    items, errors = discover_inputs(tmp_path)
    assert [printable(item.source) for item in items] == [f"{tmp_path}/caf\\xe9.png"]
    assert [printable(error.path) for error in errors] == [f"{tmp_path}/g\\xe9o.tif"]
    assert "GDAL (which reads TIFF, JPEG 2000 and 16-bit PNG) opens no file whose name is not UTF-8" in errors[0].reason
    # errors.jsonl said the name as text alone ("g\\xe9o.tif", as a file may be named): its bytes are kept too
    assert errors[0].to_json()["path_not_utf8"] == f"{tmp_path}/g%E9o.tif"
    assert "path_not_utf8" not in InputError(f"{tmp_path}/g\\xe9o.tif", "a file named so").to_json()


def test_a_raster_without_rasterio_names_the_file_and_the_extra(tmp_path, monkeypatch):
    """One plain TIFF among PNGs, rasterio not installed: the run stopped with "rasterio is not installed, but this
    feature needs it", naming neither the file nor what to install for the rest of the feature."""
    import sys

    from alps_client.errors import DependencyNotFoundError
    from alps_client.io import readers

    Image.fromarray(scene(0)).save(tmp_path / "a.png")
    Image.fromarray(scene(1)).save(tmp_path / "scan.tif")
    readers.raster_io.cache_clear()
    monkeypatch.setitem(sys.modules, "rasterio", None)  # as if not installed
    try:
        with pytest.raises(DependencyNotFoundError, match=rf"^{tmp_path}/scan\.tif is read through GDAL: rasterio is "
                                                          r"not installed.*pip install rasterio nibabel"):
            discover_inputs(tmp_path)
    finally:
        readers.raster_io.cache_clear()


def test_a_raster_read_otherwise_than_before_is_labelled_again(tmp_path):
    """A plain TIFF with an Orientation tag, or bands stored blue, green, red, labelled by an alps that read it as
    stored or from its first bands: its shard would have been kept beside images of the new reading (and scored
    against ground truth read turned). Its signature says how it is read now, so such a shard is not current; a
    PNG's and a plain raster's signatures are as before."""
    import rasterio
    from rasterio.enums import ColorInterp

    from alps_client.io.items import source_signature
    from alps_client.io.shards import read_shard_status

    Image.fromarray(scene(0)).save(tmp_path / "turned.tif", tiffinfo={0x0112: 6})
    Image.fromarray(scene(1)).save(tmp_path / "plain.tif")
    Image.fromarray(scene(2)).save(tmp_path / "photo.png")
    bands = np.stack([np.full((40, 48), v, np.uint8) for v in (30, 60, 220)])
    write_geotiff(tmp_path / "bgr.tif", bands, "EPSG:32633", (0.0, 1.0, 40.0))
    with rasterio.open(tmp_path / "bgr.tif", "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    signatures = {path.name: source_signature(str(path)) for path in sorted(tmp_path.iterdir())}
    assert signatures["turned.tif"]["read_as"] == {"orientation": 6}
    assert signatures["bgr.tif"]["read_as"] == {"bands": [3, 2, 1]}
    assert "read_as" not in signatures["plain.tif"] and "read_as" not in signatures["photo.png"]

    def status_of(recorded: dict, now: dict) -> str:
        shard = tmp_path / "shard.npz"
        meta = {"stem": "shard", "fingerprint": "f", "extra": {"source_signature": recorded}}
        np.savez(shard, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        return read_shard_status(shard, "f", now)[0]

    before = {key: value for key, value in signatures["turned.tif"].items() if key != "read_as"}
    assert status_of(before, signatures["turned.tif"]) == "changed"
    assert status_of(signatures["plain.tif"], signatures["plain.tif"]) != "changed"


def test_a_file_renamed_onto_a_read_one_with_its_time_and_size_is_read_anew(tmp_path):
    """A volume's voxels and a tiled scene's stretch were cached by path and mtime alone: a file renamed onto the
    path with the same time and size (a sync tool's, an atomic save's) was labelled with the old one's values by a
    process that had read it (a library loop, a Dask worker; code review)."""
    import nibabel

    volume = np.zeros((40, 48, 3), np.float32)
    volume[8:30, 10:40, :] = 1.0
    band = np.tile(np.arange(160, dtype=np.uint16)[None], (160, 1))[None] * 10
    config = InputConfig(tile=64, overlap=0)
    for gain in (1, 30):
        folder = tmp_path / str(gain)
        folder.mkdir()
        nibabel.save(nibabel.Nifti1Image(volume * gain, np.eye(4)), str(folder / "ct.nii"))
        write_geotiff(folder / "scene.tif", band * gain, "EPSG:32633", (500000.0, 0.5, 4600000.0))
    for name in ("ct.nii", "scene.tif"):
        path = tmp_path / name
        os.replace(tmp_path / "1" / name, path)
        first = [load_item(item, config).extra["stretch"] for item in discover_inputs(path, config)[0]]
        stat, replacement = path.stat(), tmp_path / "30" / name
        os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(replacement, path)
        assert (path.stat().st_mtime_ns, path.stat().st_size) == (stat.st_mtime_ns, stat.st_size)
        again = [load_item(item, config).extra["stretch"] for item in discover_inputs(path, config)[0]]
        assert len(again) == len(first) > 1 and all(new[1] > 10 * old[1] for new, old in zip(again, first)), (
            name, first, again)


def test_hidden_files_are_no_inputs(tmp_path):
    """``._photo.jpg`` (macOS's AppleDouble files on a shared disk) and ``.thumb.png`` are skipped as hidden folders
    are, by docs/inputs.md; no test held it (mutation audit)."""
    Image.fromarray(scene(1)).save(tmp_path / "photo.jpg")
    (tmp_path / "._photo.jpg").write_bytes(b"\0\5\26\7" + b"\0" * 60)  # AppleDouble's magic: not an image
    Image.fromarray(scene(2)).save(tmp_path / ".thumb.png")
    items, rejected = discover_inputs(tmp_path, InputConfig())
    assert [item.source for item in items] == [str(tmp_path / "photo.jpg")] and rejected == []


def test_the_stretch_is_taken_over_valid_pixels_alone(tmp_path):
    """A 16-bit scene with a wide nodata border: its 2-98 % range counted the border's value, and the scene's own
    pixels lost their contrast (mutation audit: no test held it)."""
    inner = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7 + 1000)[None]
    bordered = np.zeros((1, 160, 160), np.uint16)
    bordered[:, 48:112, 48:112] = inner
    write_geotiff(tmp_path / "alone.tif", inner, "EPSG:32633", (500000.0, 0.5, 4600000.0))
    write_geotiff(tmp_path / "bordered.tif", bordered, "EPSG:32633", (500000.0, 0.5, 4600000.0), nodata=0)
    stretch = {name: load_item(discover_inputs(tmp_path / f"{name}.tif", InputConfig())[0][0]).extra["stretch"]
               for name in ("alone", "bordered")}
    assert stretch["alone"] == stretch["bordered"] and stretch["alone"][0] > 1000, stretch


@pytest.mark.parametrize("orientation", [3, 6])
def test_a_turned_tiffs_nodata_is_turned_with_its_pixels(tmp_path, orientation):
    """A plain TIFF with an Orientation tag and nodata: the nodata mask was not turned with the pixels, a tested
    mutation found (orientation 6: the image failed on every run; 3: the wrong pixels left unlabelled)."""
    from alps_client.io.readers import upright

    band = np.full((1, 80, 120), 50, np.uint8)
    band[:, :20, :30] = 0  # nodata in the stored top-left corner
    Image.fromarray(band[0]).save(tmp_path / "turned.tif", tiffinfo={0x0112: orientation, 42113: "0"})  # GDAL_NODATA

    (item,), rejected = discover_inputs(tmp_path, InputConfig())
    loaded = load_item(item)
    expected = upright(band[0] != 0, orientation)
    assert not rejected and loaded.valid is not None and np.array_equal(loaded.valid, expected)
    assert loaded.rgb.shape[:2] == expected.shape


def test_a_png_turned_by_its_xmp_or_a_raw_exif_profile_is_labelled_as_displayed(tmp_path):
    """PIL's exif_transpose turns a PNG by XMP's tiff:Orientation and ImageMagick's raw EXIF profile too: reading
    the orientation from the eXIf chunk alone labelled such a PNG lying on its side (review)."""
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    profile = f"\nexif\n{len(raw) + 6:8d}\n" + (b"Exif\0\0" + raw).hex()
    for name, key, text in (("xmp.png", "XML:com.adobe.xmp", xmp), ("raw.png", "Raw profile type exif", profile)):
        info = PngImagePlugin.PngInfo()
        info.add_itxt(key, text) if key.startswith("XML") else info.add_text(key, text)
        Image.fromarray(scene(5)).save(tmp_path / name, pnginfo=info)
        with Image.open(tmp_path / name) as im:  # as PIL shows it
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert shown.shape[:2] == SIZE[::-1], name
        (item,), rejected = discover_inputs(tmp_path / name, InputConfig())
        loaded = load_item(item)
        assert not rejected and np.array_equal(loaded.rgb, shown) and not loaded.plain_copy, name


def test_dry_run_names_the_file_pil_warns_of(stand_in_repo, tmp_path):
    """`alps run --dry-run` reads every image's header: PIL's warning of a damaged EXIF block came out unnamed there,
    the run's naming of it being set up after the dry run had returned (review)."""
    data = tmp_path / "data"
    data.mkdir()
    write_damaged_exif_jpeg(data / "damaged.jpg", scene(1))
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(data), "--out", str(tmp_path / "out"), "--model-repository",
         str(stand_in_repo), "--dry-run"],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=cli_env(tmp_path / "ph"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"alps: {data / 'damaged.jpg'}: Tag data larger than file. Skipping tag 270 (PIL's warning while reading " \
           "it)" in result.stderr.splitlines() and "Warning" not in result.stderr, result.stderr
