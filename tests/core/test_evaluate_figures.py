"""`alps evaluate`: the figures a user reads (JSON and table), pinned where a wrong one would pass unseen.

Each test builds a few small label maps and their ground truth in ``tmp_path`` and checks the numbers, names and
lines of the report and the table, or the refusal, that a plausible slip in the code would change.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from alps_client.errors import AlpsError
from alps_client.evaluate import evaluate_dataset
from flows.cli import main as alps


def write(path: Path, array: Any) -> None:
    """A single-channel 8-bit label map (or ground truth of class ids) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def write_rgb(path: Path, array: npt.NDArray[np.uint8], mode: str | None = None) -> None:
    """A colour-coded (or grey-and-alpha, RGBA) ground-truth file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def bands(*classes: int, rows: int = 10, width: int = 40) -> npt.NDArray[np.int64]:
    """Ground truth of horizontal bands, ``rows`` rows of each class in turn."""
    return np.repeat(np.array(classes), rows)[:, None].repeat(width, axis=1)


def evaluate_cli(root: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[dict[str, Any], str, str]:
    """`alps evaluate root/out root/gt` with ``flags``, exit 0: its JSON report, its table, its stderr."""
    json_path = root / "report.json"
    assert alps(["evaluate", str(root / "out"), str(root / "gt"), "--json", str(json_path), *flags]) == 0
    printed = capsys.readouterr()
    return json.loads(json_path.read_text()), printed.out, printed.err


def evaluate_fails(root: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """`alps evaluate root/out root/gt` with ``flags``, exit 2: its error output."""
    assert alps(["evaluate", str(root / "out"), str(root / "gt"), "--json", str(root / "e.json"), *flags]) == 2
    return capsys.readouterr().err


def classes_file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- the summary figures: each its own number, in JSON and in its row of the table -------------------------------


@pytest.fixture
def figures(tmp_path: Path) -> Path:
    """Four classes where mIoU, mIoU*, coverage, pixel accuracy and its labelled-pixels form all differ.

    Class 0 -> cluster 5 (and cluster 5 also labels a quarter of class 2: errors); class 1 -> cluster 6 on half its
    pixels, the other half unlabelled; class 2 -> cluster 7 on three quarters; class 3 never labelled.
    """
    gt = bands(0, 1, 2, 3)
    pred = np.full(gt.shape, 255)
    pred[gt == 0] = 5
    pred[10:20, :20] = 6
    pred[20:30, :30], pred[20:30, 30:] = 7, 5
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    return tmp_path


def test_each_summary_figure_is_its_own_number_in_the_report_and_its_row(figures, capsys):
    """mIoU* printed as mIoU, coverage printed as pixel accuracy, or accuracy on labelled pixels divided by every
    ground-truth pixel, would each read as a plausible figure: the rows are pinned to their own numbers."""
    report, table, _ = evaluate_cli(figures, capsys)
    assert report["class_iou"] == {"0": 0.8, "1": 0.5, "2": 0.75, "3": 0.0}
    assert report["class_iou_labelled_pixels"] == {"0": 0.8, "1": 1.0, "2": 0.75, "3": None}
    assert report["miou"] == pytest.approx(2.05 / 4)
    assert report["miou_labelled_pixels"] == pytest.approx(2.55 / 3)
    assert report["coverage"] == pytest.approx(1000 / 1600)  # labelled pixels / ground-truth pixels
    assert report["pixel_accuracy"] == pytest.approx(900 / 1600)  # correct / ground-truth pixels
    assert report["pixel_accuracy_labelled_pixels"] == pytest.approx(900 / 1000)  # correct / labelled pixels
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert rows["mIoU"].startswith("mIoU               0.512          over all 4 classes, unlabelled pixels counted")
    assert rows["mIoU*"] == ("mIoU*              0.850          (*) on labelled pixels only; 1 class left out (-): "
                             "no labelled pixel of it, none labelled as it")
    assert rows["coverage"] == "coverage           0.625          ground-truth pixels given a pseudo-label"
    assert rows["pixel accuracy"] == "pixel accuracy     0.562          (on labelled pixels only: 0.900)"
    assert "\n3                  0.000       -  []  (never labelled)\n" in table
    assert "\n1                  0.500   1.000  [6]\n" in table


def test_a_class_labelled_only_as_another_class_is_not_said_never_labelled(tmp_path, capsys):
    """Class 1's pixels are all labelled, by cluster 5, which Hungarian matching gives class 0: they are errors,
    not 'never labelled' (that would send the user looking for a class the run missed, not one it merged)."""
    gt = bands(0, 0, 0, 1, 2)  # class 0: 30 rows, class 1: 10 rows, class 2: 10 rows
    pred = np.where(gt < 2, 5, 255)
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    report, table, _ = evaluate_cli(tmp_path, capsys)
    assert report["class_to_pseudo_labels"] == {"0": [5], "1": [], "2": []}
    assert report["classes_never_labelled"] == [2]  # class 2 alone: none of its pixels has a pseudo-label
    assert report["class_iou_labelled_pixels"] == {"0": 0.75, "1": 0.0, "2": None}
    assert "\n1                  0.000   0.000  []\n" in table  # no "(never labelled)" on class 1's row
    assert "\n2                  0.000       -  []  (never labelled)\n" in table
    assert table.count("(never labelled)") == 1


def test_only_unmatched_pseudo_labels_with_pixels_are_said_to_count_as_errors(tmp_path, capsys):
    """Cluster 9 labels pixels but is matched to no class: its pixels are errors. Cluster 12 of the dataset has
    no pixel here: listing it among 'their pixels count as errors' would blame pixels that do not exist."""
    gt = bands(0, 0, 1, 1)
    pred = np.where(gt == 0, 4, 6)
    pred[20:, 30:] = 9  # a quarter of class 1's pixels: Hungarian gives class 1 to cluster 6
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    classes = [{"id": k, "name": f"cluster_{k}"} for k in (4, 6, 9, 12)]
    (tmp_path / "out" / "classes.json").write_text(json.dumps({"classes": classes}))
    report, table, _ = evaluate_cli(tmp_path, capsys)
    assert report["unmatched_pseudo_labels"] == [9, 12] and report["pseudo_labels_absent_from_scored_pixels"] == [12]
    assert "\npseudo-labels matched to no class (their pixels count as errors): [9]\n" in table
    assert "\npseudo-labels of the dataset with no pixel in the images scored (matched to no class): [12]" in table


def test_images_without_pseudo_labels_are_said_left_out_or_counted_as_the_run_did(tmp_path, capsys):
    """With --exclude-unlabelled-images the image without a pseudo-label is not scored: saying it was 'counted as
    unlabelled' would misread every figure (and the other way round)."""
    gt = bands(0, 1, rows=20)
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "gt" / "b.png", gt)  # never labelled
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", gt + 3)
    report, table, _ = evaluate_cli(tmp_path, capsys, "--exclude-unlabelled-images")
    assert report["n_images"] == 1 and report["miou"] == 1.0 and report["missing_pseudo_labels"] == ["b"]
    assert "\n1 ground-truth image(s) have no pseudo-label (left out; first: b)" in table
    report, table, _ = evaluate_cli(tmp_path, capsys)
    assert report["n_images"] == 2 and report["miou"] == 0.5 and report["coverage"] == 0.5
    assert "\n1 ground-truth image(s) have no pseudo-label (counted as unlabelled; first: b)" in table


# --- values that name no class: never listed as classes ---------------------------------------------------------


def test_ignored_values_are_not_listed_as_classes_only_in_images_left_out(tmp_path, capsys):
    """The image left out holds 255 and --ignore-index 9, which name no class, and class 7: only class 7 is
    'a class only in the images left out'; 255 or 9 there would read as classes the score missed."""
    gt = bands(0, 1, rows=20)
    gt[0, 0] = 255
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.where(gt == 255, 255, gt + 3))
    left_out = bands(0, 7, 9, 255)
    write(tmp_path / "gt" / "b.png", left_out)
    report, table, _ = evaluate_cli(tmp_path, capsys, "--exclude-unlabelled-images", "--ignore-index", "9")
    assert report["classes_only_in_images_left_out"] == [7]
    assert report["ground_truth_ignored"] == [9, 255] and report["class_iou"] == {"0": 1.0, "1": 1.0}
    assert ("\nground-truth classes only in the images left out (--exclude-unlabelled-images), not scored: 7\n"
            in table)


def test_a_declared_class_that_is_ignored_is_not_listed_as_declared_with_no_pixel(tmp_path, capsys):
    """--gt-classes declares road (2) and --ignore-index 2 leaves it out: it has pixels, so listing it among the
    'declared classes with no ground-truth pixel' would be false; pool (9) has none and is listed."""
    gt = bands(0, 1, 2, 0)
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", gt + 3)
    declared = classes_file(tmp_path / "c.yaml", "classes: [{name: ground, id: 0}, {name: water, id: 1}, "
                                                  "{name: road, id: 2}, {name: pool, id: 9}]\n")
    report, table, _ = evaluate_cli(tmp_path, capsys, "--gt-classes", declared, "--ignore-index", "2")
    assert report["classes_absent_from_ground_truth"] == [9]
    assert report["class_iou"] == {"0": 1.0, "1": 1.0} and report["ground_truth_ignored"] == [2, 255]
    assert "\ndeclared classes with no ground-truth pixel in these images (not scored): 'pool' (9)\n" in table


# --- colour-coded ground truth --------------------------------------------------------------------------------------


def test_an_ignored_colour_beside_declared_colours_leaves_every_declared_class_scored(tmp_path, capsys):
    """road '#ff0000' (id 0) and water '#0000ff' (id 1) declared, black ignored: black must get an id of its own.
    Given road's id, road's pixels would be ignored with black's, and mIoU scored on water alone."""
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[:10] = [255, 0, 0]
    rgb[10:20] = [0, 0, 255]  # the last 10 rows black
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    pred = np.repeat(np.array([3, 4, 5]), 10)[:, None].repeat(30, axis=1)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    declared = classes_file(tmp_path / "c.yaml", "classes: [{name: road, colour: '#ff0000'}, "
                                                  "{name: water, colour: '#0000ff'}]\n")
    report, table, _ = evaluate_cli(tmp_path, capsys, "--gt-classes", declared, "--ignore-index", "#000000")
    assert {report["ground_truth_names"][k]: v for k, v in report["class_iou"].items()} == {"road": 1.0, "water": 1.0}
    assert report["n_classes"] == 2 and report["coverage"] == 1.0
    assert report["ground_truth_ignored"] == [2]  # black's own id, after the declared ones
    assert report["ground_truth_colours"] == {"0": "#ff0000", "1": "#0000ff", "2": "#000000"}
    assert report["per_image"][0]["pixels"] == 600  # black's 300 pixels left out, none of road's
    assert "\nroad               1.000   1.000  [3]\n" in table and "#000000 ignored" in table


def test_black_and_green_ground_truth_is_colour_coded_not_greys(tmp_path, capsys):
    """#000000 and #00ff00 alone: green's red and blue channels are equal, but it is no grey. Read as greys, both
    would be class 0, and a two-class ground truth scored as one."""
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[10:] = [0, 255, 0]
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.repeat(np.array([3, 4]), 10)[:, None].repeat(20, 1))
    report, _, _ = evaluate_cli(tmp_path, capsys)
    assert report["n_classes"] == 2 and report["miou"] == 1.0
    assert {report["ground_truth_colours"][k]: v for k, v in report["class_iou"].items()} == {"#000000": 1.0,
                                                                                                "#00ff00": 1.0}


def test_an_ignored_colour_no_pixel_has_is_said_and_ignores_nothing(tmp_path, capsys):
    """--ignore-index '#123456' (a typo): the warning is not enough, nothing may be ignored in its place: the
    first colour's class (id 0) dropped would change every figure."""
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[:10], rgb[10:20], rgb[20:] = [255, 0, 0], [0, 0, 255], [0, 255, 0]
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    pred = np.repeat(np.array([3, 4, 255]), 10)[:, None].repeat(30, axis=1)  # green never labelled
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    report, table, err = evaluate_cli(tmp_path, capsys, "--ignore-index", "#123456")
    assert report["n_classes"] == 3 and report["ground_truth_ignored"] == []
    assert {report["ground_truth_colours"][k]: v for k, v in report["class_iou"].items()} == {
        "#ff0000": 1.0, "#0000ff": 1.0, "#00ff00": 0.0}
    assert report["miou"] == pytest.approx(2 / 3) and report["coverage"] == pytest.approx(2 / 3)
    assert report["warnings"] == [("--ignore-index #123456: no ground-truth pixel has this value, so nothing is "
                                   "ignored for it (a typo?)")]
    assert "alps: --ignore-index #123456: no ground-truth pixel" in err
    assert "colour-coded ground truth: 3 colours\n" in table + "\n"


def test_a_colour_tolerance_of_half_the_distance_between_two_colours_is_refused(tmp_path, capsys):
    """#000000 and #0a0000 are 10 apart in red: #050000 is within 5 of both, so its class would be a guess."""
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[10:] = [10, 0, 0]
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.repeat(np.array([3, 4]), 10)[:, None].repeat(20, 1))
    declared = classes_file(tmp_path / "c.yaml", "classes: [{name: a, colour: '#000000'}, "
                                                  "{name: b, colour: '#0a0000'}]\n")
    error = evaluate_fails(tmp_path, capsys, "--gt-classes", declared, "--gt-colour-tolerance", "5")
    assert "--gt-colour-tolerance 5: #000000 and #0a0000 are 10 apart in a channel" in error
    assert "give at most 4" in error
    report, _, _ = evaluate_cli(tmp_path, capsys, "--gt-classes", declared, "--gt-colour-tolerance", "4")
    assert report["miou"] == 1.0


def test_a_colour_tolerance_of_255_is_refused_as_out_of_range(tmp_path, capsys):
    """--gt-colour-tolerance lies in 0..254: 255 would take any colour to any declared one."""
    rgb = np.zeros((20, 20, 3), np.uint8)
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.full((20, 20), 3))
    declared = classes_file(tmp_path / "c.yaml", "classes: [{name: a, colour: '#000000'}]\n")
    assert "--gt-colour-tolerance must lie in 0..254, got 255" in evaluate_fails(
        tmp_path, capsys, "--gt-classes", declared, "--gt-colour-tolerance", "255")
    assert evaluate_cli(tmp_path, capsys, "--gt-classes", declared, "--gt-colour-tolerance", "254")[0]["miou"] == 1.0


def test_a_file_of_256_colours_is_refused_and_one_of_255_is_a_label_map(tmp_path, capsys):
    """255 colours fit the ids 0..254; a 256th would take id 255, 'no label' elsewhere: a photograph given as
    ground truth is refused, not scored."""
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = np.arange(256).reshape(16, 16)
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.full((16, 16), 3))
    assert "the colour-coded ground truth has more than 255 colours" in evaluate_fails(tmp_path, capsys)
    rgb[0, 0] = rgb[0, 1]  # 255 colours
    write_rgb(tmp_path / "gt" / "a.png", rgb)
    assert evaluate_cli(tmp_path, capsys)[0]["n_classes"] == 255


def test_an_undeclared_id_is_named_by_its_pixel_count(tmp_path, capsys):
    """Of two ids --gt-classes does not declare, the commonest is named (the one to look into), with its count."""
    gt = bands(0, 1, 7, 7)
    gt[0, :5] = 5  # id 5: 5 pixels, lower than 7 (800 pixels)
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", gt + 3)
    declared = classes_file(tmp_path / "c.yaml", "classes: [ground, water]\n")
    error = evaluate_fails(tmp_path, capsys, "--gt-classes", declared)
    assert f"a.png: 800 pixels of class id 7 (1 other undeclared id too), which {declared} does not declare" in error


# --- alpha ----------------------------------------------------------------------------------------------------------


def test_a_half_transparent_ground_truth_pixel_is_scored(tmp_path, capsys):
    """Only alpha 0 is 'nothing there': a pixel of alpha 128 (an antialiased edge, a tinted overlay) holds its
    class. Left out, class 2, all half-transparent here, would vanish from the score."""
    gt = bands(0, 1, 2, 3)
    alpha = np.full(gt.shape, 255, np.uint8)
    alpha[20:30] = 128  # class 2
    alpha[30:] = 0  # class 3: nothing there
    write_rgb(tmp_path / "gt" / "a.png", np.dstack([gt.astype(np.uint8), alpha]), "LA")
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", gt + 3)
    report, table, _ = evaluate_cli(tmp_path, capsys)
    assert report["class_iou"] == {"0": 1.0, "1": 1.0, "2": 1.0} and report["n_classes"] == 3
    assert report["ground_truth_transparent_pixels"] == 400 and report["per_image"][0]["pixels"] == 1200
    assert "400 pixels of alpha 0 left out" in table


# --- sizes and pairing ----------------------------------------------------------------------------------------------


def test_a_transposed_ground_truth_is_refused_not_scored(tmp_path):
    """30x40 ground truth against a 40x30 label map: as many pixels, other places. Scored, every pixel would be
    compared with another's."""
    gt = bands(0, 1, 2, rows=10, width=40)  # 30 rows, 40 columns
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", gt.T + 3)  # 40 rows, 30 columns
    with pytest.raises(AlpsError, match=r"gt/a\.png: 40x30 px differs from its pseudo-label .*a\.png, 30x40 px: give "
                                        r"ground truth of the images' size"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")


def test_one_unpaired_name_on_each_side_is_no_near_miss(tmp_path):
    """north_1.png (ground truth of an image never labelled) and the label map north_2 (an image without ground
    truth): that their names end apart says nothing of a suffix. Refused as a near miss, a good dataset could not
    be scored at all."""
    gt = bands(0, 1, rows=20)
    for name in ("a", "north_2"):
        write(tmp_path / "out" / "ann_dir" / "train" / f"{name}.png", gt + 3)
    for name in ("a", "north_1"):
        write(tmp_path / "gt" / f"{name}.png", gt)
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert report.missing_pseudo_labels == ["north_1"] and report.missing_ground_truth == ["north_2"]
    assert report.n_images == 2 and report.miou == 0.5


def test_a_hyphen_led_suffix_of_the_ground_truth_is_named_as_the_flag_to_give(tmp_path, capsys):
    """img-mask.png for img.png (Kvasir-style names): the refusal names --gt-suffix -mask, the flag that pairs
    them; without it the user is left to guess why no name matched."""
    gt = bands(0, 1, rows=20)
    for name in ("img", "other"):
        write(tmp_path / "out" / "ann_dir" / "train" / f"{name}.png", gt + 3)
        write(tmp_path / "gt" / f"{name}-mask.png", gt)
    error = evaluate_fails(tmp_path, capsys)
    assert "give --gt-suffix=-mask to pair them by the rest of their names (2 names would pair, e.g. img-mask with " \
           "img)" in error
    # as said, one word: "--gt-suffix -mask" is refused by argparse (a value led by "-" reads as a flag)
    assert evaluate_cli(tmp_path, capsys, "--gt-suffix=-mask")[0]["miou"] == 1.0


def test_label_maps_named_in_nfd_pair_with_ground_truth_named_in_nfc(tmp_path):
    """A dataset folder copied through macOS names café.png in NFD, its ground truth in NFC: the same name to a
    reader. Unpaired, both would be scored as total misses."""
    gt = bands(0, 1, rows=20)
    write(tmp_path / "out" / "ann_dir" / "train" / unicodedata.normalize("NFD", "café.png"), gt + 3)
    write(tmp_path / "gt" / unicodedata.normalize("NFC", "café.png"), gt)
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert (report.n_images, report.miou, report.coverage) == (1, 1.0, 1.0)
    assert report.missing_ground_truth == [] and report.missing_pseudo_labels == []


# --- NIfTI -----------------------------------------------------------------------------------------------------------


def test_nan_voxels_of_a_reoriented_nifti_ground_truth_are_left_out_where_they_are(tmp_path):
    """Float ground truth stored LPS beside a RAS scan, with NaN (no value) in one corner: its NaN mask must be
    flipped with its ids. Left as stored, the mask would leave out the wrong voxels and score the NaN ones."""
    nibabel = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 3, (12, 14, 4)).astype(np.float32)
    nan = np.zeros(ids.shape, bool)
    nan[:3, :4, :] = True  # a corner that flipping x and y moves
    affine = np.array([[0.8, 0, 0, -4.0], [0, 0.8, 0, -5.6], [0, 0, 2.5, 0.0], [0, 0, 0, 1]])
    labels = np.where(nan, 255, ids + 3).astype(np.uint8)  # nothing labelled where the truth has no value
    for z in range(4):
        write(tmp_path / "out" / "ann_dir" / "train" / f"ct__z{z:04d}.png", labels[..., z])
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"slice_axis": 2}}}))
    (tmp_path / "out" / "volumes").mkdir()
    nibabel.save(nibabel.Nifti1Image(labels, affine), str(tmp_path / "out" / "volumes" / "ct.nii.gz"))
    truth = nibabel.Nifti1Image(np.where(nan, np.nan, ids).astype(np.float32), affine)
    stored = truth.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S"))))
    (tmp_path / "gt").mkdir()
    nibabel.save(stored, str(tmp_path / "gt" / "ct.nii.gz"))
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert report.ground_truth_nan_pixels == int(nan.sum()) == 48
    assert report.miou == 1.0 and report.coverage == 1.0 and report.pixel_accuracy == 1.0
    assert report.per_image[0]["pixels"] == ids.size - 48
    assert "stored in another orientation than the volume labelled" in report.warnings[0]


# --- lossy ground truth ---------------------------------------------------------------------------------------------


def test_lossy_formats_are_told_apart_from_lossless_ones_by_their_bytes(tmp_path):
    """A lossless WebP keeps its values: warning of it would send the user to a tolerance they do not need."""
    from alps_client.evaluate.ground_truth import is_lossy

    ids = bands(0, 1, rows=8, width=16).astype(np.uint8)
    Image.fromarray(ids).save(tmp_path / "lossless.webp", lossless=True)
    Image.fromarray(ids).save(tmp_path / "lossy.webp", quality=80)
    Image.fromarray(ids).save(tmp_path / "a.jpg")
    Image.fromarray(ids).save(tmp_path / "a.png")
    assert [is_lossy(tmp_path / name) for name in ("lossless.webp", "lossy.webp", "a.jpg", "a.png")] == [
        False, True, True, False]


def test_lossy_ground_truth_of_an_image_without_a_pseudo_label_is_warned_of_too(tmp_path, capsys):
    """Its values are scored (as misses): their compression noise counts as classes as much as a paired file's."""
    gt = bands(0, 1, rows=20)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", gt + 3)
    write(tmp_path / "gt" / "a.png", gt)
    Image.fromarray(gt.astype(np.uint8)).save((tmp_path / "gt" / "b.jpg"), quality=100)
    report, _, err = evaluate_cli(tmp_path, capsys)
    assert report["missing_pseudo_labels"] == ["b"]
    assert [w for w in report["warnings"] if "lossy" in w] != [] and "b.jpg" in err


# --- NIfTI orientation ------------------------------------------------------------------------------------------------


def test_a_2d_nifti_ground_truth_on_another_plane_than_its_slice_is_refused():
    """A 2-D NIfTI image is a volume of one slice: one whose affine puts that slice on another plane than the image
    labelled (a sagittal mask for an axial slice) was cut to a (4, 1) strip and scored, unsaid (mutation audit)."""
    from alps_client.evaluate.orientation import to_voxel_order

    ids = np.arange(20).reshape(4, 5)
    axes_swapped = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # RSA: its j and k swapped
    with pytest.raises(AlpsError, match=r"gt.nii: its affine puts its voxels on another grid than the volume "
                                        r"labelled, ct.nii.gz \(RAS, .* there, RSA, .* here\)"):
        to_voxel_order([ids, None], np.eye(4), axes_swapped, Path("gt.nii"), "ct.nii.gz")
    flipped = np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = 3  # the same grid, its first axis the other way: reordered, not refused
    assert np.array_equal(to_voxel_order([ids, None], np.eye(4), flipped, Path("gt.nii"), "ct.nii.gz")[0], ids[::-1])


def test_nifti_ground_truth_of_a_volume_whose_affine_is_unknown_is_said_unchecked(tmp_path):
    """Neither a label volume in OUT nor a shard naming the source: compared index by index, which the report
    must say, or an LPS truth against a RAS volume scores as a mirror image, unsaid."""
    from alps_client.evaluate.ground_truth import GroundTruth
    from alps_client.evaluate.orientation import in_volume_order, orientation_note

    read = GroundTruth(np.zeros((4, 5, 2), np.int64), affine=np.eye(4))
    reoriented: list[tuple[Path, str, str]] = []
    unplaced: list[Path] = []
    parts = [tmp_path / "out" / "ann_dir" / "train" / f"ct__z000{k}.png" for k in range(2)]
    assert in_volume_order(tmp_path / "out", read, parts, tmp_path / "gt" / "ct.nii.gz", reoriented, unplaced) is read
    assert reoriented == [] and unplaced == [tmp_path / "gt" / "ct.nii.gz"]
    assert orientation_note(reoriented, unplaced).startswith("1 ground-truth volume compared index by index, "
                                                             "unchecked for orientation")


def test_the_inputs_a_run_did_not_label_are_read_from_its_errors_and_its_missing_images(tmp_path):
    """Their ground truth is theirs, not a near miss of another image's: an input left out by --allow-partial
    (manifest's ``missing``) as much as a rejected one (``errors.jsonl``)."""
    from alps_client.evaluate.pairing import near_misses, rejected_inputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "errors.jsonl").write_text(json.dumps({"path": "/data/north/broken.png", "reason": "not an image"}) + "\n")
    (out / "manifest.json").write_text(json.dumps({"missing": [{"path": "/data/north/c.png", "stem": "north__c",
                                                                "reason": "failed"}]}))
    assert rejected_inputs(out) == ["/data/north/broken.png", "/data/north/c.png"]
    unpaired = {"west__c": "west/c.png"}  # labelled, without ground truth: north/c.png would look like its truth
    assert near_misses(["north/c.png"], unpaired)[0] == [("north/c.png", "west__c")]
    assert near_misses(["north/c.png"], unpaired, rejected=rejected_inputs(out))[0] == []
