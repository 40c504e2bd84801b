"""`alps evaluate`: every ground-truth class counts, unlabelled pixels and missing images are misses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps_client.errors import AlpsError
from alps_client.evaluate import evaluate_dataset
from alps_client.io.discovery import discover_inputs
from flows.cli import main as alps

Q = 10  # each quarter-row band of the 40x40 maps


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture
def case(tmp_path):
    """GT classes 0..3 in four bands. Pseudo-labels: class 0 -> cluster 5, class 1 -> cluster 2, class 2 never
    labelled (255), class 3 split between clusters 7 and 8; one GT image has no pseudo-label at all."""
    gt = np.repeat(np.arange(4), Q)[:, None].repeat(40, axis=1)
    gt[0, 0] = 255  # ignored ground truth
    pred = np.full_like(gt, 255)
    pred[gt == 0], pred[gt == 1] = 5, 2
    pred[3 * Q :, :20], pred[3 * Q :, 20:] = 7, 8
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "gt" / "sub" / "b.png", gt)  # found recursively; an image at sub/b.png is named sub__b
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    return tmp_path


def evaluate_cli(case, *flags):
    json_path = case / "report.json"
    assert alps(["evaluate", str(case / "out"), str(case / "gt"), "--json", str(json_path), *flags]) == 0
    report = json.loads(json_path.read_text())
    # Each image's figures add up to the dataset's, whatever the ground truth's kind (ids, greys, colours).
    pixels = sum(row["pixels"] for row in report["per_image"])
    assert len(report["per_image"]) == report["n_images"]
    if pixels:
        scored = [row for row in report["per_image"] if row["pixels"]]
        correct = sum(row["pixel_accuracy"] * row["pixels"] for row in scored)
        labelled = sum(row["coverage"] * row["pixels"] for row in scored)
        assert correct / pixels == pytest.approx(report["pixel_accuracy"])
        assert labelled / pixels == pytest.approx(report["coverage"])
    return report


def test_hungarian_counts_every_class_and_every_miss(case, capsys):
    classes = [{"id": 5, "name": "roofs"}, {"id": 2, "name": "cluster_2"}]  # as `alps relabel` names them
    (case / "out" / "classes.json").write_text(json.dumps({"classes": classes}))
    report = evaluate_cli(case, "--exclude-unlabelled-images")
    assert report["class_iou"] == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.5}
    assert report["miou"] == pytest.approx(2.5 / 4)  # the class never labelled scores 0, it does not vanish
    assert report["class_iou_labelled_pixels"]["3"] == pytest.approx(0.5) and report["classes_never_labelled"] == [2]
    assert report["miou_labelled_pixels"] == pytest.approx(2.5 / 3)  # class 2: no labelled pixel, left out
    assert report["class_iou_labelled_pixels"]["2"] is None
    assert report["coverage"] == pytest.approx(1199 / 1599)
    assert report["class_to_pseudo_labels"]["3"] in ([7], [8]) and len(report["unmatched_pseudo_labels"]) == 1
    assert report["missing_pseudo_labels"] == ["sub__b"] and report["n_images"] == 1
    table = capsys.readouterr().out
    assert "(never labelled)" in table and "mIoU" in table and "matched to no class" in table
    assert "  [5 roofs]\n" in table and "  [2]\n" in table  # a name the user gave is shown, a default is not
    assert report["pseudo_label_names"] == {"5": "roofs", "2": "cluster_2"}


def test_a_class_with_no_labelled_pixel_is_left_out_of_miou_on_labelled_pixels(tmp_path, capsys):
    """mIoU* is the labels' quality where there are labels: a class whose every pixel is unlabelled, and that no
    pseudo-label is matched to, has 0/0 there. It scored 0 (the demo's mIoU* 0.999 -> 0.799 with such a class);
    now it is left out and said. mIoU still counts it as 0; a class that labelled pixels were matched to, with no
    ground truth among them, still scores 0 (its union is not empty)."""
    from alps_client.evaluate import Confusion, scores

    gt = np.repeat(np.arange(3), 10)[:, None].repeat(30, axis=1)  # class 2 where nothing is labelled
    pred = np.where(gt < 2, gt + 4, 255)
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    report = evaluate_cli(tmp_path)
    assert report["class_iou_labelled_pixels"] == {"0": 1.0, "1": 1.0, "2": None}
    assert report["miou_labelled_pixels"] == 1.0 and report["miou"] == pytest.approx(2 / 3)
    table = capsys.readouterr().out
    assert "\n2                  0.000       -  []  (never labelled)\n" in table
    assert "(*) on labelled pixels only; 1 class left out (-): no labelled pixel of it, none labelled as it" in table
    conf = Confusion.of(pred.astype(np.uint8), gt)
    assert scores(conf, {4: 0, 5: 2}).class_iou_labelled_pixels == {0: 1.0, 1: 0.0, 2: 0.0}


def test_pseudo_labels_of_the_dataset_absent_from_the_scored_pixels_are_listed(case, capsys):
    """A class of the dataset found only in images without ground truth was in no list: matched to nothing, unsaid."""
    classes = [{"id": k, "name": f"cluster_{k}"} for k in (2, 5, 7, 8, 11)]
    (case / "out" / "classes.json").write_text(json.dumps({"classes": classes}))
    report = evaluate_cli(case)
    assert report["pseudo_labels_absent_from_scored_pixels"] == [11] and 11 in report["unmatched_pseudo_labels"]
    table = capsys.readouterr().out
    assert "pseudo-labels of the dataset with no pixel in the images scored (matched to no class): [11]" in table
    assert "matched to no class (their pixels count as errors): [11]" not in table


def test_a_class_only_in_images_left_out_is_named(case, capsys):
    """With --exclude-unlabelled-images, a class found only in the images left out vanished from 'over all N
    classes', unsaid."""
    gt = np.repeat(np.arange(4), Q)[:, None].repeat(40, axis=1)
    gt[:Q] = 9  # class 9 only in sub/b.png, which has no pseudo-label
    write(case / "gt" / "sub" / "b.png", gt)
    report = evaluate_cli(case, "--exclude-unlabelled-images")
    assert report["classes_only_in_images_left_out"] == [9] and "9" not in report["class_iou"]
    assert "ground-truth classes only in the images left out (--exclude-unlabelled-images), not scored: 9\n" in \
        capsys.readouterr().out
    assert evaluate_cli(case)["classes_only_in_images_left_out"] == []  # counted: class 9 is scored


def test_majority_merges_clusters_and_missing_images_count_as_unlabelled(case):
    report = evaluate_cli(case, "--matching", "majority")
    assert report["class_to_pseudo_labels"]["3"] == [7, 8] and not report["unmatched_pseudo_labels"]
    # Image b has no pseudo-label: all its pixels are misses, halving every IoU.
    assert report["class_iou"] == {"0": pytest.approx(0.5), "1": 0.5, "2": 0.0, "3": 0.5}
    assert report["class_iou_labelled_pixels"] == {"0": 1.0, "1": 1.0, "2": None, "3": 1.0}
    assert report["coverage"] == pytest.approx(1199 / 3198) and report["n_images"] == 2


def test_a_ground_truth_value_that_names_no_class_can_be_ignored(case, capsys):
    """--ignore-index 2 (as LoveDA's 0 is no-data): class 2's pixels name no class, so it is neither a class
    nor a miss; 255 stays ignored."""
    report = evaluate_cli(case, "--exclude-unlabelled-images", "--ignore-index", "2")
    assert report["class_iou"] == {"0": 1.0, "1": 1.0, "3": 0.5} and report["classes_never_labelled"] == []
    assert report["miou"] == pytest.approx(2.5 / 3) and report["coverage"] == 1.0
    assert report["ground_truth_ignored"] == [2, 255]
    assert "ground-truth pixels of 2 and 255 are ignored" in capsys.readouterr().out
    assert alps(["evaluate", str(case / "out"), str(case / "gt"), "--ignore-index", "two"]) == 2
    assert "--ignore-index must be a class id (an integer)" in capsys.readouterr().err


def test_several_values_can_be_ignored_and_one_no_pixel_has_is_said(case, capsys):
    """A repeated --ignore-index kept only its last value, unsaid; a value absent from the ground truth (a typo)
    changed nothing, unseen."""
    report = evaluate_cli(case, "--exclude-unlabelled-images", "--ignore-index", "2", "--ignore-index", "3",
                          "--ignore-index", "9")
    assert report["class_iou"] == {"0": 1.0, "1": 1.0} and report["ground_truth_ignored"] == [2, 3, 9, 255]
    assert report["warnings"] == [("--ignore-index 9: no ground-truth pixel has this value, so nothing is ignored "
                                   "for it (a typo?)")]
    assert f"alps: {report['warnings'][0]}\n" in capsys.readouterr().err
    assert evaluate_cli(case, "--ignore-index", "2")["warnings"] == []
    assert alps(["evaluate", str(case / "out"), str(case / "gt"), "--ignore-index", "2", "--ignore-index", "none"]) == 2
    assert "--ignore-index none (every value is a class, 255 too) cannot be given with values to ignore (2)" in \
        capsys.readouterr().err


def test_broken_ground_truth_and_folders_given_as_files_say_what_they_are(case, capsys):
    """A zero-byte or a text file read 'cannot identify image file', a truncated one 'image file is truncated', with
    no next step; a ground-truth folder that is a file 'does not exist'; OUT given as its manifest.json suggested
    `alps run ... --out manifest.json`."""
    (case / "gt" / "a.png").write_bytes(b"")
    with pytest.raises(AlpsError, match=r"gt/a.png: a zero-byte file, not a label map .*: copy it again"):
        evaluate_dataset(case / "out", case / "gt")
    write(case / "gt" / "a.png", np.arange(1600).reshape(40, 40) % 7)
    whole = (case / "gt" / "a.png").read_bytes()
    (case / "gt" / "a.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AlpsError, match=r"gt/a.png: truncated image data .*: copy it again"):
        evaluate_dataset(case / "out", case / "gt")
    (case / "out" / "manifest.json").write_text("{}")
    assert alps(["evaluate", str(case / "out" / "manifest.json"), str(case / "gt")]) == 2
    assert f"is a file, not a dataset folder: give its folder, {case / 'out'}\n" in capsys.readouterr().err
    assert alps(["evaluate", str(case / "out"), str(case / "out" / "manifest.json")]) == 2
    assert "manifest.json is a file, not a folder: give the folder that holds the label maps" in \
        capsys.readouterr().err


def test_a_binary_mask_is_not_scored_on_its_background_alone(tmp_path, capsys):
    """0/255 ground truth (Inria's buildings, Kvasir's polyps, ISIC's lesions, DRIVE's vessels): 255 is ignored by
    default, so its foreground vanished and a single class was scored, without a word. Now the run must say what
    255 is: 'none' counts it as a class, 255 ignores it."""
    gt = np.zeros((40, 40), np.uint8)
    gt[:, 30:] = 255  # the foreground: a quarter of the pixels
    pred = np.full_like(gt, 255)
    pred[:, :30], pred[:20, 30:] = 4, 9  # background labelled; the foreground's upper half
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "holds only 0 and 255: a binary mask?" in err and "--ignore-index none" in err
    counted = evaluate_cli(tmp_path, "--ignore-index", "none")
    assert counted["class_iou"] == {"0": 1.0, "255": 0.5} and counted["miou"] == 0.75
    assert counted["class_to_pseudo_labels"] == {"0": [4], "255": [9]} and counted["ground_truth_ignored"] == []
    assert counted["coverage"] == pytest.approx(1400 / 1600)
    assert "no ground-truth value is ignored: 255 is a class" in capsys.readouterr().out
    ignored = evaluate_cli(tmp_path, "--ignore-index", "255")  # said, so done: the background alone
    assert ignored["class_iou"] == {"0": 1.0} and ignored["ground_truth_ignored"] == [255]


def test_errors_name_the_problem(case, capsys):
    assert alps(["evaluate", str(case / "nothing"), str(case / "gt")]) == 2
    assert "no label maps" in capsys.readouterr().err
    (case / "a_file").write_text("not a folder")
    assert alps(["evaluate", str(case / "out"), str(case / "gt"), "--json", str(case / "a_file" / "e.json")]) == 2
    printed = capsys.readouterr()  # the figures, then one line (was a traceback)
    (line,) = printed.err.strip().splitlines()
    assert "IoU" in printed.out
    assert line.startswith(f"alps: error: --json {case / 'a_file' / 'e.json'}: cannot write the report (")
    assert line.endswith("); the figures are above")
    write(case / "gt2" / "a.png", np.zeros((5, 6)))  # sizes were (H, W) tuples, unnamed, the first file's only
    write(case / "gt2" / "sub" / "b.png", np.zeros((5, 6)))
    write(case / "out" / "ann_dir" / "val" / "sub__b.png", np.zeros((40, 40)))
    with pytest.raises(AlpsError, match=r"gt2/a.png: 6x5 px differs from its pseudo-label .*/a.png, 40x40 px \(1 "
                                        r"other ground-truth file too\): give ground truth of the images' size"):
        evaluate_dataset(case / "out", case / "gt2")
    (case / "out" / "ann_dir" / "val" / "sub__b.png").unlink()
    (case / "gt4").mkdir()
    (case / "gt4" / "a.png").write_bytes(b"not a png")
    with pytest.raises(AlpsError, match=r"gt4/a.png: not an image \(it holds text\): give the folder of the label "):
        evaluate_dataset(case / "out", case / "gt4")
    write(case / "gt3" / "zzz.png", np.zeros((5, 5)))
    with pytest.raises(AlpsError, match="has the name of a pseudo-label"):
        evaluate_dataset(case / "out", case / "gt3")
    write(case / "gt5" / "a.png", np.full((40, 40), 255))  # was "mIoU 0.000 over all 0 classes", exit 0
    with pytest.raises(AlpsError, match=r"gt5 holds no class to score: every pixel of its 1 image scored is ignored"):
        evaluate_dataset(case / "out", case / "gt5")
    write(case / "out" / "ann_dir" / "val" / "a.png", np.zeros((40, 40)))  # was "once --image-suffix  is dropped"
    with pytest.raises(AlpsError, match=r"val/a.png: two label maps of one name in two splits; `alps run` names"):
        evaluate_dataset(case / "out", case / "gt")


def test_a_ground_truth_tree_that_mirrors_the_dataset_matches_however_deep(tmp_path):
    """Images north/t0.png and south/t0.png are labelled as north__t0 and south__t0 (a top-level split folder is
    left out): their ground truth at the same places matches each its own, in PNG or TIFF; the same name twice
    where a flat name is looked up is refused, not one of them silently dropped."""
    gt = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    flipped = 1 - gt
    write(tmp_path / "out" / "ann_dir" / "train" / "north__t0.png", gt)
    write(tmp_path / "out" / "ann_dir" / "val" / "south__t0.png", flipped)
    write(tmp_path / "out" / "ann_dir" / "val" / "flat.png", gt)
    write(tmp_path / "gt" / "north" / "t0.png", gt)
    (tmp_path / "gt" / "val" / "south").mkdir(parents=True)
    Image.fromarray(flipped.astype(np.uint8)).save(tmp_path / "gt" / "val" / "south" / "t0.tif")
    write(tmp_path / "gt" / "elsewhere" / "flat.png", gt)  # nested differently from its image: the file stem
    deep = Path("S2B_MSIL2A_20240611T103629_N0510_R008_T32TQM_20240611T134522.SAFE", "GRANULE", "L2A_" + "x" * 150,
                "t0.png")  # a name cut to fit a file name
    write(tmp_path / "images" / deep, gt)
    (item,), _ = discover_inputs(tmp_path / "images")
    write(tmp_path / "out" / "ann_dir" / "train" / f"{item.stem}.png", flipped)
    write(tmp_path / "gt" / deep, flipped)
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert report.n_images == 4 and report.miou == 1.0 and report.coverage == 1.0
    assert report.missing_ground_truth == [] and report.missing_pseudo_labels == []
    write(tmp_path / "gt" / "other" / "flat.png", flipped)
    with pytest.raises(AlpsError, match=r"1 label map name\(s\) have several ground-truth files .* e\.g\. flat: "):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")


def test_ground_truth_is_paired_with_the_image_whose_path_it_mirrors_or_ends_as_the_run_recorded(tmp_path):
    """`alps run` renames an image whose name another took (val/0001.png -> val__0001_png beside train/0001.png;
    a.png -> a_png beside A.png) and joins folders (north/a.png -> north__a). Names alone then paired nothing, or
    the wrong files: a mirrored tree was refused, a flat folder scored its images as unlabelled (mIoU 0.135 instead
    of 0.402). The sources the run records in its manifest pair each file with the image whose path it mirrors, or
    ends; a name several images share is refused, not guessed."""
    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    images = {"0001": ("train", "train/0001.png", bands), "val__0001_png": ("val", "val/0001.png", 1 - bands),
              "A": ("train", "A.png", bands), "a_png": ("train", "a.png", 1 - bands),
              "north__b": ("val", "north/b.png", bands), "south__c": ("train", "south/c.tif", 1 - bands),
              "d": ("val", "d.jpg", bands), "d_png": ("val", "d.png", 1 - bands)}
    for stem, (split, _, gt) in images.items():
        write(tmp_path / "out" / "ann_dir" / split / f"{stem}.png", gt + 3)
    manifest = {"sources": {stem: source for stem, (_, source, _) in images.items()}}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    for _, source, gt in images.values():  # the tree of the images; d.png is the truth of d.png, not of d.jpg
        if source != "d.jpg":
            write(tmp_path / "tree" / Path(source).with_suffix(".png"), gt)
    report = evaluate_dataset(tmp_path / "out", tmp_path / "tree", exclude_unlabelled_images=True)
    assert (report.n_images, report.miou, report.coverage) == (7, 1.0, 1.0)
    assert report.missing_ground_truth == ["d"] and report.missing_pseudo_labels == []
    for name, gt in (("b.png", bands), ("c.png", 1 - bands)):  # flat: the ends of their paths
        write(tmp_path / "flat" / name, gt)
    write(tmp_path / "flat" / "south" / "b.png", bands)  # not north/b.png's: an image the dataset lacks
    report = evaluate_dataset(tmp_path / "out", tmp_path / "flat", exclude_unlabelled_images=True)
    assert (report.n_images, report.miou) == (2, 1.0) and report.missing_pseudo_labels == ["south__b"]
    write(tmp_path / "tree" / "b.png", 1 - bands)  # north/b.png's truth twice: the whole path wins
    report = evaluate_dataset(tmp_path / "out", tmp_path / "tree", exclude_unlabelled_images=True)
    assert report.miou == 1.0 and report.missing_pseudo_labels == ["b"]
    write(tmp_path / "flat" / "0001.png", bands)  # train/0001.png's or val/0001.png's?
    with pytest.raises(AlpsError, match=r"flat/0001.png may be the ground truth of 2 images of the dataset \(e\.g\. "
                                        r"train/0001.png and val/0001.png\): give a ground-truth folder whose tree"):
        evaluate_dataset(tmp_path / "out", tmp_path / "flat")


def test_ground_truth_in_another_split_folder_is_not_the_truth_of_an_image_of_its_name(tmp_path):
    """test/0002.png is named 0002 (its split folder left out of its name): val/0002.png, no image's truth, was
    scored against it. It is not paired, and a file of its name in another folder is refused as a near miss (it
    was scored as two total misses, exit 0), unless the run rejected the image it is the truth of."""
    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    write(tmp_path / "out" / "ann_dir" / "test" / "0002.png", bands + 3)
    write(tmp_path / "out" / "ann_dir" / "train" / "0003.png", bands + 3)
    sources = {"0002": "test/0002.png", "0003": "train/0003.png"}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"sources": sources}))
    write(tmp_path / "gt" / "val" / "0002.png", 1 - bands)
    write(tmp_path / "gt" / "0003.png", bands)  # flat: still train/0003.png's
    with pytest.raises(AlpsError, match=r"1 ground-truth file under .*gt paired with no pseudo-label looks like the "
                                        r"truth of one that has none, .* \(e\.g\. val/0002.png -> "
                                        r"ann_dir/test/0002.png\): move each to the place of its image in the "
                                        r"dataset's tree \(e\.g\. test/0002.png\)"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    rejected = {"path": str(tmp_path / "images" / "val" / "0002.png"), "reason": "not an image"}
    (tmp_path / "out" / "errors.jsonl").write_text(json.dumps(rejected) + "\n")  # val/0002.png was an input
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert report.missing_pseudo_labels == ["val/0002.png"] and report.missing_ground_truth == ["0002"]
    assert [row["image"] for row in report.per_image if row["image"] != "val/0002.png"] == ["0003"]


def test_ground_truth_that_nearly_pairs_is_refused_and_says_how_to_pair_it(tmp_path, capsys):
    """Names that belong together but did not pair were scored as total misses on both sides (exit 0): 2 of 3
    files named *_label (mIoU 0.713 -> 0.063 on the demo; the --gt-suffix hint came only when none paired),
    SCENE_0003.png for scene_0003.png, north/c.png's truth under south/. Ground truth of images never labelled and
    pseudo-labels without ground truth, named apart, are still counted as before."""
    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    for stem in ("s_0", "s_1", "s_2", "scene_0003", "north__c", "lone"):
        write(tmp_path / "out" / "ann_dir" / "train" / f"{stem}.png", bands + 3)
    for name in ("s_0.png", "s_1_label.png", "s_2_label.png"):
        write(tmp_path / "gt" / name, bands)
    with pytest.raises(AlpsError, match=r"2 ground-truth files .* look like .*\(e\.g\. s_1_label.png -> "
                                        r"ann_dir/train/s_1.png, s_2_label.png -> ann_dir/train/s_2.png\): give "
                                        r"--gt-suffix _label to pair them"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    for name in ("s_1", "s_2"):
        (tmp_path / "gt" / f"{name}_label.png").rename(tmp_path / "gt" / f"{name}.png")
    write(tmp_path / "gt" / "SCENE_0003.png", bands)
    write(tmp_path / "gt" / "south" / "c.png", bands)
    write(tmp_path / "gt" / "other.png", bands)
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert err.count("alps: error:") == 1 and "2 ground-truth files" in err
    assert "SCENE_0003.png -> ann_dir/train/scene_0003.png, south/c.png -> ann_dir/train/north__c.png" in err
    assert "move each to the place of its image in the dataset's tree (e.g. north/c.png); or rename each" in err
    (tmp_path / "gt" / "SCENE_0003.png").rename(tmp_path / "gt" / "scene_0003.png")
    (tmp_path / "gt" / "south").rename(tmp_path / "gt" / "north")
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")  # other.png: an image never labelled
    assert report.missing_pseudo_labels == ["other"] and report.missing_ground_truth == ["lone"]
    assert report.n_images == 6


@pytest.mark.parametrize("recorded", [True, False])
def test_names_in_another_unicode_form_pair_with_their_images(tmp_path, recorded):
    """A ground-truth folder copied from macOS names café.png in NFD ('e' and a combining accent), its image in
    NFC: the same name to a reader, other bytes to Python. Both were scored as total misses (exit 0)."""
    import unicodedata

    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    write(tmp_path / "out" / "ann_dir" / "train" / "café é.png", bands + 3)
    write(tmp_path / "out" / "ann_dir" / "val" / "sub__ü.png", 1 - bands + 3)
    if recorded:
        sources = {"café é": "train/café é.png", "sub__ü": "val/sub/ü.png"}
        (tmp_path / "out" / "manifest.json").write_text(json.dumps({"sources": sources}))
    write(tmp_path / "gt" / unicodedata.normalize("NFD", "café é.png"), bands)
    write(tmp_path / "gt" / unicodedata.normalize("NFD", "sub/ü.png"), 1 - bands)
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert (report.n_images, report.miou, report.coverage) == (2, 1.0, 1.0)
    assert report.missing_ground_truth == [] and report.missing_pseudo_labels == []


def test_two_ground_truth_files_of_one_image_are_refused(tmp_path):
    """scene_0003.png and scene_0003.tif beside it: the .png was paired, the .tif scored as the truth of an image
    the dataset lacks, all its pixels misses (the image counted twice, exit 0)."""
    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    for name in ("scene_0002", "scene_0003"):
        write(tmp_path / "out" / "ann_dir" / "train" / f"{name}.png", bands + 3)
        write(tmp_path / "gt" / f"{name}.png", bands)
    sources = {name: f"{name}.png" for name in ("scene_0002", "scene_0003")}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"sources": sources}))
    Image.fromarray(bands.astype(np.uint8)).save(tmp_path / "gt" / "scene_0003.tif")
    with pytest.raises(AlpsError, match=r"e\.g\. scene_0003: .*gt/scene_0003.png and .*gt/scene_0003.tif; keep one of "
                                        r"them: remove or move the other"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")


def test_ground_truth_named_with_other_suffixes_than_its_images_is_paired_when_told(tmp_path, capsys):
    """ISPRS Potsdam's truth of top_potsdam_2_10_RGB.tif is top_potsdam_2_10_label.tif, DeepGlobe's of 104_sat.jpg
    is 104_mask.png, ISIC's of ISIC_0000000.jpg is ISIC_0000000_segmentation.png: no name matched, and nothing
    said how to pair them. The refusal now names the flags; with them, each map meets its own truth."""
    from alps_client.io.tiling import tile_windows

    bands = np.repeat(np.arange(2), 10)[:, None].repeat(20, axis=1)
    for tile in ("2_10", "2_11", "3_10"):  # a tiled scene too: its parts carry the image's suffix
        write(tmp_path / "gt" / f"top_potsdam_{tile}_label.png", bands if tile != "3_10" else 1 - bands)
    write(tmp_path / "out" / "ann_dir" / "train" / "top_potsdam_2_10_RGB.png", bands + 5)
    write(tmp_path / "out" / "ann_dir" / "val" / "top_potsdam_2_11_RGB.png", bands + 5)
    for x0, y0, x1, y1 in tile_windows(20, 20, 10, 0):
        write(tmp_path / "out" / "ann_dir" / "val" / f"top_potsdam_3_10_RGB__x{x0}_y{y0}.png",
              (1 - bands[y0:y1, x0:x1]) + 5)
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"tile": 10, "overlap": 0}}}))
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "give --gt-suffix _label --image-suffix _RGB to pair them by the rest of their names (3 names would " \
           "pair, e.g. top_potsdam_2_10_label with top_potsdam_2_10_RGB)" in err
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt"), "--gt-suffix", "_label"]) == 2
    assert "give --gt-suffix _label --image-suffix _RGB to pair them" in capsys.readouterr().err  # one was given
    report = evaluate_cli(tmp_path, "--gt-suffix", "_label", "--image-suffix", "_RGB")
    assert report["n_images"] == 3 and report["missing_pseudo_labels"] == [] and report["missing_ground_truth"] == []
    assert report["class_iou"] == {"0": 1.0, "1": 1.0} and report["coverage"] == 1.0
    sources = {f"top_potsdam_{tile}_RGB": f"potsdam/top_potsdam_{tile}_RGB.tif" for tile in ("2_10", "2_11", "3_10")}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"tile": 10, "overlap": 0}},
                                                                "sources": sources}))  # paired by paths: the same
    assert evaluate_cli(tmp_path, "--gt-suffix", "_label", "--image-suffix", "_RGB") == report
    for path in (tmp_path / "out" / "ann_dir").rglob("*.png"):  # ISIC: only the truth has a suffix
        path.rename(path.with_name(path.name.replace("_RGB", "")))
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt")]) == 2
    assert "give --gt-suffix _label to pair them" in capsys.readouterr().err
    assert evaluate_cli(tmp_path, "--gt-suffix", "_label")["class_iou"] == {"0": 1.0, "1": 1.0}


def test_ground_truth_in_every_format_pil_reads_is_scored_and_lossy_formats_are_said(tmp_path, capsys):
    """Kvasir-SEG's masks are JPEG, DRIVE's GIF: such files were skipped unsaid (one JPEG among PNGs left its image
    out, and mIoU rose; an all-JPEG folder was refused as named like no pseudo-label). Lossy ones get a warning."""
    bands = np.zeros((40, 40), np.uint8)
    bands[16:] = 1  # on JPEG's 8x8 blocks: flat blocks come back exact
    formats = {"a.jpg": {}, "b.jpeg": {}, "c.bmp": {}, "d.gif": {}, "e.webp": {"lossless": True},
               "f.webp": {"quality": 100}, "g.j2k": {}, "h.png": {}}
    for name, options in formats.items():
        write(tmp_path / "out" / "ann_dir" / "train" / f"{Path(name).stem}.png", bands + 3)
        (tmp_path / "gt").mkdir(exist_ok=True)
        Image.fromarray(bands).save(tmp_path / "gt" / name, **options)
    report = evaluate_cli(tmp_path)
    assert report["n_images"] == 8 and report["missing_pseudo_labels"] == [] and report["miou"] == 1.0
    (warning,) = report["warnings"]  # JPEG twice, the lossy WebP and JPEG 2000
    assert warning.startswith("4 files of the ground truth use lossy compression (e.g. ") and "a.jpg" in warning
    assert "--gt-colour-tolerance" in warning and f"alps: {warning}\n" in capsys.readouterr().err
    for name in formats:
        if name != "a.jpg":
            (tmp_path / "gt" / name).unlink()
    assert evaluate_cli(tmp_path)["n_images"] == 1  # an all-JPEG folder


def test_a_multi_page_ground_truth_file_says_that_only_its_first_page_is_read(tmp_path, capsys):
    """A multi-page TIFF (a z-stack of label maps) was scored on its first page, unsaid (`alps run` warns for such
    inputs)."""
    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1).astype(np.uint8)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", bands + 3)
    (tmp_path / "gt").mkdir()
    Image.fromarray(bands).save(tmp_path / "gt" / "a.tif", save_all=True, append_images=[Image.fromarray(1 - bands)])
    report = evaluate_cli(tmp_path)
    assert report["miou"] == 1.0 and report["warnings"] == [
        (f"1 ground-truth file of several pages (e.g. {tmp_path / 'gt' / 'a.tif'}, 2 pages): only the first page "
         "is read, as `alps run` reads images")]


def test_a_tiled_scene_is_scored_whole_against_its_ground_truth(tmp_path):
    """A scene labelled in overlapping tiles (no label map of its own) is assembled as --stitch does and scored
    once against the scene's ground truth: the same figures as its whole label map, overlaps not counted twice."""
    from alps_client.io.tiling import stitch_scene, tile_windows

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (50, 70)).astype(np.uint8)
    tiles = []
    for x0, y0, x1, y1 in tile_windows(50, 70, 32, 8):
        label = np.where(rng.random((y1 - y0, x1 - x0)) < 0.8, gt[y0:y1, x0:x1] + 4, 255).astype(np.uint8)
        write(tmp_path / "out" / "ann_dir" / "train" / f"scene__x{x0}_y{y0}.png", label)
        tiles.append(((x0, y0, x1, y1), label))
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"tile": 32, "overlap": 8}}}))
    write(tmp_path / "gt" / "scene.png", gt)
    write(tmp_path / "whole" / "ann_dir" / "train" / "scene.png", stitch_scene((50, 70), 32, 8, tiles))
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    whole = evaluate_dataset(tmp_path / "whole", tmp_path / "gt")
    assert report.n_images == 1 and report.missing_ground_truth == [] and report.missing_pseudo_labels == []
    assert report.miou == whole.miou and report.coverage == whole.coverage and 0.7 < report.coverage < 0.9
    # a scene without ground truth is one image missing it, as it is scored, not one per tile (accounting audit)
    for (x0, y0, _, _), label in tiles:
        write(tmp_path / "out" / "ann_dir" / "val" / f"other__x{x0}_y{y0}.png", label)
    other = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert other.inputs_without_ground_truth == ["other"]
    assert other.missing_ground_truth == sorted(f"other__x{x0}_y{y0}" for (x0, y0, _, _), _ in tiles)  # as before
    write(tmp_path / "gt_small" / "scene.png", gt[:40])
    with pytest.raises(AlpsError, match=r"70x40 px differs from the scene its 6 tile label map\(s\)"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt_small")


def test_a_volume_is_scored_whole_against_its_nifti_label_volume(tmp_path):
    """Slices labelled along --slice-axis are scored against the ground-truth volume; a slice the run left out
    (empty in the source) is a miss: the same figures as one ground-truth PNG per slice, missing ones counted."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 3, (20, 24, 5)).astype(np.uint8)  # slices along axis 1: 24 planes of 20 x 5
    for z in range(24):
        plane = gt[:, z, :]
        write(tmp_path / "per_slice" / f"ct__z{z:04d}.png", plane)
        if 2 <= z < 20:  # the others were empty in the source: not labelled
            write(tmp_path / "out" / "ann_dir" / "train" / f"ct__z{z:04d}.png", plane + 3)
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"slice_axis": 1}}}))
    (tmp_path / "gt").mkdir()
    nibabel.save(nibabel.Nifti1Image(gt, np.eye(4)), str(tmp_path / "gt" / "ct.nii.gz"))
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    reference = evaluate_dataset(tmp_path / "out", tmp_path / "per_slice")
    assert report.n_images == 1 and report.missing_pseudo_labels == [] and report.missing_ground_truth == []
    assert report.miou == pytest.approx(reference.miou) and report.coverage == pytest.approx(18 / 24)
    assert report.miou_labelled_pixels == 1.0
    nibabel.save(nibabel.Nifti1Image(gt.astype(np.float32) + 0.5, np.eye(4)), str(tmp_path / "gt" / "ct.nii.gz"))
    with pytest.raises(AlpsError, match=r"ct.nii.gz: class ids must be whole numbers, got [0-9].5 \(float32\)"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")


def test_a_2d_nifti_image_is_scored_against_its_2d_nifti_label_image(tmp_path):
    """An X-ray or ultrasound frame saved as a 2-D NIfTI is labelled as its one slice, whatever --slice-axis; its
    2-D NIfTI ground truth was refused ("must be 3D")."""
    nibabel = pytest.importorskip("nibabel")
    gt = np.repeat(np.arange(3), 8)[:, None].repeat(30, axis=1).astype(np.uint8)
    (tmp_path / "gt").mkdir()
    nibabel.save(nibabel.Nifti1Image(gt, np.eye(4)), str(tmp_path / "gt" / "xray.nii.gz"))
    pred = np.where(gt < 2, gt + 4, 255).astype(np.uint8)
    write(tmp_path / "out" / "ann_dir" / "train" / "xray__z0000.png", pred)
    for axis in (0, 2):
        (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"slice_axis": axis}}}))
        report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
        assert report.class_iou == {0: 1.0, 1: 1.0, 2: 0.0} and report.missing_pseudo_labels == []


def test_a_nifti_ground_truth_in_another_orientation_is_scored_in_the_labelled_volumes_voxel_order(tmp_path):
    """Ground truth was compared index by index whatever its affine: the same labels stored LPS beside a RAS scan
    were scored against the wrong voxels without a word (and with axes permuted, refused for their size). It is
    now flipped and permuted into the labelled volume's voxel order, as their affines say, and that is said; one
    on another voxel grid is refused, naming it."""
    nibabel = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    rng = np.random.default_rng(2)
    gt = rng.integers(0, 3, (20, 24, 5)).astype(np.uint8)
    affine = np.array([[0.8, 0, 0, -8.0], [0, 0.8, 0, -9.6], [0, 0, 2.5, 0.0], [0, 0, 0, 1]])
    for z in range(5):
        write(tmp_path / "out" / "ann_dir" / "train" / f"ct__z{z:04d}.png", gt[..., z] + 3)
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"inputs": {"slice_axis": 2}}}))
    (tmp_path / "out" / "volumes").mkdir()  # --write-nifti-labels: the label volume has the scan's affine
    nibabel.save(nibabel.Nifti1Image(gt + 3, affine), str(tmp_path / "out" / "volumes" / "ct.nii.gz"))
    truth = nibabel.Nifti1Image(gt, affine)
    (tmp_path / "gt").mkdir()
    for codes in ("LPS", "PRS"):  # flipped; permuted and flipped (shape 24 x 20 x 5)
        stored = truth.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes))))
        nibabel.save(stored, str(tmp_path / "gt" / "ct.nii.gz"))
        report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
        assert report.miou == 1.0 and report.coverage == 1.0, codes
        assert report.warnings == [(
            f"1 ground-truth volume stored in another orientation than the volume labelled (e.g. "
            f"{tmp_path / 'gt' / 'ct.nii.gz'}: {codes}, the volume RAS) was scored in the volume's voxel order "
            "(axes flipped or permuted by their affines)")]
    nibabel.save(truth, str(tmp_path / "gt" / "ct.nii.gz"))  # as the scan: nothing to say
    assert evaluate_dataset(tmp_path / "out", tmp_path / "gt").warnings == []
    coarse = affine @ np.diag([2.0, 2.0, 1.0, 1.0])  # other voxels: no index of one is a voxel of the other
    nibabel.save(nibabel.Nifti1Image(gt, coarse), str(tmp_path / "gt" / "ct.nii.gz"))
    with pytest.raises(AlpsError, match=r"gt/ct.nii.gz: its affine puts its voxels on another grid than the "
                                        r"volume labelled, .*out/volumes/ct.nii.gz \(RAS, 1.6x1.6x2.5 mm voxels, "
                                        r"origin \(-8, -9.6, 0\) mm there, RAS, 0.8x0.8x2.5 mm voxels, .* resample "
                                        r"it onto that volume first"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")


def test_ids_above_255_are_classes_and_255_among_them_is_not_dropped_unsaid(tmp_path, capsys):
    """FreeSurfer's aparc+aseg labels go up to 2035, and its 255 is a class (CC_Anterior): such 16-bit ground
    truth was refused ("class ids must lie in 0..255"). Every id is a class now; 255 among ids stored in more
    than 8 bits is not taken for "no label" without a word: the run must be told."""
    gt = np.repeat(np.array([0, 17, 255, 1035, 2035], np.uint16), 8)[:, None].repeat(40, axis=1)
    pred = np.full(gt.shape, 255, np.uint8)
    for cluster, value in enumerate([0, 17, 255, 1035]):  # 2035 never labelled
        pred[gt == value] = cluster + 3
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "a.png")  # a 16-bit PNG
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "holds 255 among class ids stored in more than 8 bits (e.g. a.png)" in err and "CC_Anterior" in err
    assert "--ignore-index none" in err
    report = evaluate_cli(tmp_path, "--ignore-index", "none")
    assert report["class_iou"] == {"0": 1.0, "17": 1.0, "255": 1.0, "1035": 1.0, "2035": 0.0}
    assert report["miou"] == pytest.approx(0.8) and report["classes_never_labelled"] == [2035]
    assert report["class_to_pseudo_labels"]["1035"] == [6] and report["coverage"] == pytest.approx(0.8)
    assert "\n2035               0.000       -  []  (never labelled)" in capsys.readouterr().out
    without = evaluate_cli(tmp_path, "--ignore-index", "2035")  # 255 ignored as well: the default's
    assert without["class_iou"] == {"0": 1.0, "17": 1.0, "1035": 1.0} and without["ground_truth_ignored"] == [255, 2035]


def test_negative_and_float_ids_are_read_as_the_integers_they_are(tmp_path, capsys):
    """An int16 GeoTIFF whose "no label" is -1, and a float32 one of whole numbers (rasters written by GIS tools):
    both were refused or cast unchecked. -1 is a class until ignored; fractions (a probability map or an image
    given as ground truth) are refused, naming the file. NaN without a declared nodata is no value, so no label: it
    was refused as a fraction; it is left out, counted and said, as for inputs."""
    import rasterio

    bands = np.repeat(np.arange(4), 10)[:, None].repeat(40, axis=1)
    pred = np.where(bands < 3, bands + 1, 255).astype(np.uint8)  # class 3 (-1 in the GeoTIFF) never labelled
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    (tmp_path / "gt").mkdir()

    def save(values, dtype):
        with rasterio.open(tmp_path / "gt" / "a.tif", "w", driver="GTiff", width=40, height=40, count=1,
                           dtype=dtype) as dst:
            dst.write(values.astype(dtype)[None])

    save(np.where(bands == 3, -1, bands), "int16")
    counted = evaluate_cli(tmp_path)
    assert counted["class_iou"] == {"-1": 0.0, "0": 1.0, "1": 1.0, "2": 1.0} and counted["miou"] == 0.75
    ignored = evaluate_cli(tmp_path, "--ignore-index", "-1")
    assert ignored["class_iou"] == {"0": 1.0, "1": 1.0, "2": 1.0} and ignored["ground_truth_ignored"] == [-1, 255]
    assert "ground-truth pixels of -1 and 255 are ignored" in capsys.readouterr().out
    save(bands * 10.0, "float32")
    assert evaluate_cli(tmp_path)["class_iou"] == {"0": 1.0, "10": 1.0, "20": 1.0, "30": 0.0}
    save(np.where(bands == 3, 0.25, bands), "float32")
    with pytest.raises(AlpsError, match=r"a.tif: class ids must be whole numbers, got 0.25 \(float32\)"):
        evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    capsys.readouterr()
    save(np.where(bands == 3, np.nan, bands), "float32")
    nan = evaluate_cli(tmp_path)
    assert nan["class_iou"] == {"0": 1.0, "1": 1.0, "2": 1.0} and nan["coverage"] == 1.0
    assert nan["ground_truth_nan_pixels"] == 400 and nan["ground_truth_nodata"] == []
    assert "400 ground-truth pixels of NaN (no value) are left out (no class, no miss)" in capsys.readouterr().out


def test_a_reader_that_leaves_early_gets_no_traceback(case):
    """`alps evaluate OUT GT | head -1`: the pipe closes before the table is out; exit 141, as a shell tool."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "evaluate", str(case / "out"), str(case / "gt"),
                             "--json", str(case / "e.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child has written anything: its first flush meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr
    assert json.loads((case / "e.json").read_text())["n_classes"] == 4  # the report was written all the same


POTSDAM = {"impervious": (255, 255, 255), "building": (0, 0, 255), "low_vegetation": (0, 255, 255),
           "tree": (0, 255, 0), "car": (255, 255, 0), "clutter": (255, 0, 0)}  # ISPRS Potsdam's colours


def test_colour_coded_ground_truth_counts_each_colour_as_a_class(tmp_path, capsys):
    """ISPRS Potsdam and Vaihingen, DeepGlobe: one RGB colour per class, white a class, not "no label". Such
    ground truth was refused ("must be a single-channel image"). A tile that is all white (a GeoTIFF here, read
    band-first) is colour-coded like the others, decided over the whole dataset."""
    import rasterio

    palette = np.array(list(POTSDAM.values()), np.uint8)
    hex_of = {name: "#{:02x}{:02x}{:02x}".format(*rgb) for name, rgb in POTSDAM.items()}
    bands = np.repeat(np.arange(6), 5)[:, None].repeat(30, axis=1)  # six bands of 5 rows, in POTSDAM's order
    pred = bands + 10
    pred[bands == 2] = 255  # low vegetation never labelled
    (tmp_path / "gt").mkdir()
    Image.fromarray(palette[bands]).save(tmp_path / "gt" / "a.png")
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    with rasterio.open(tmp_path / "gt" / "b.tif", "w", driver="GTiff", width=30, height=30, count=3,
                       dtype="uint8") as dst:
        dst.write(np.full((3, 30, 30), 255, np.uint8))  # impervious surfaces only
    write(tmp_path / "out" / "ann_dir" / "val" / "b.png", np.full((30, 30), 10))
    report = evaluate_cli(tmp_path)
    iou = {report["ground_truth_colours"][k]: v for k, v in report["class_iou"].items()}
    assert iou == {hex_of["impervious"]: 1.0, hex_of["building"]: 1.0, hex_of["low_vegetation"]: 0.0,
                   hex_of["tree"]: 1.0, hex_of["car"]: 1.0, hex_of["clutter"]: 1.0}
    assert report["n_classes"] == 6 and report["miou"] == pytest.approx(5 / 6) and report["ground_truth_ignored"] == []
    table = capsys.readouterr().out
    assert f"\n{hex_of['impervious']:<16}   1.000" in table and "colour-coded ground truth: 6 colours" in table
    clutter_ignored = evaluate_cli(tmp_path, "--ignore-index", hex_of["clutter"])
    assert hex_of["clutter"] not in [clutter_ignored["ground_truth_colours"][k] for k in clutter_ignored["class_iou"]]
    assert clutter_ignored["n_classes"] == 5 and clutter_ignored["miou"] == pytest.approx(4 / 5)
    assert f"{hex_of['clutter']} ignored" in capsys.readouterr().out
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt"), "--ignore-index", "3"]) == 2
    assert "colour-coded: give --ignore-index a colour as #rrggbb" in capsys.readouterr().err


def test_pixels_of_alpha_0_are_no_label_and_grey_and_alpha_is_read_as_ids(tmp_path, capsys):
    """A grey-and-alpha (LA) label map was refused as 'got shape (H, W, 2)'; an RGBA colour-coded one counted the
    colour under alpha 0 (nothing there) as one more class. The grey or colour is read, alpha 0 left out, said."""
    bands = np.repeat(np.arange(2), 20)[:, None].repeat(40, axis=1)
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[:, :10] = 0  # a quarter of the pixels: nothing there
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", bands + 3)
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.dstack([bands.astype(np.uint8), alpha]), "LA").save(tmp_path / "gt" / "a.png")
    report = evaluate_cli(tmp_path)
    assert report["class_iou"] == {"0": 1.0, "1": 1.0} and report["ground_truth_transparent_pixels"] == 400
    assert "1 ground-truth file with an alpha channel (grey or RGB and alpha): the grey or colour is the class, 400 " \
           "pixels of alpha 0 left out" in capsys.readouterr().out
    rgb = np.where(bands[..., None] == 1, [255, 0, 0], [0, 0, 255]).astype(np.uint8)
    rgb[:, :10] = [0, 255, 0]  # a colour only where nothing is
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "gt" / "a.png")
    report = evaluate_cli(tmp_path)
    assert len(report["class_iou"]) == 2 and report["miou"] == 1.0 and report["coverage"] == 1.0
    assert sorted(report["ground_truth_colours"].values()) == ["#0000ff", "#ff0000"]


def test_class_ids_saved_as_grey_rgb_images_are_read_as_ids(case):
    """Label maps written as three equal channels (cv2.imwrite of ids): the ids, 255 still "no label"."""
    for path in (case / "gt").rglob("*.png"):
        ids = np.asarray(Image.open(path))
        Image.fromarray(np.repeat(ids[..., None], 3, axis=2)).save(path)
    report = evaluate_cli(case, "--exclude-unlabelled-images")
    assert report["class_iou"] == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.5} and report["ground_truth_colours"] == {}
    assert report["ground_truth_ignored"] == [255] and report["coverage"] == pytest.approx(1199 / 1599)


def test_pixels_a_geotiff_declares_nodata_are_no_class(tmp_path, capsys):
    """ESA WorldCover's classes are 10..100 and its nodata 0, declared in the GeoTIFF: its no-data pixels were
    scored as a class never labelled, pulling mIoU down (or, labelled, counted as errors)."""
    import rasterio

    bands = np.repeat(np.array([0, 10, 20, 30]), 10)[:, None].repeat(40, axis=1)
    pred = (bands // 10 + 3).astype(np.uint8)  # every pixel labelled, the nodata band too
    pred[bands == 30] = 255  # class 30 never labelled
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    (tmp_path / "gt").mkdir()

    def save(values, dtype, nodata):
        with rasterio.open(tmp_path / "gt" / "a.tif", "w", driver="GTiff", width=40, height=40, count=1,
                           dtype=dtype, nodata=nodata) as dst:
            dst.write(values.astype(dtype)[None])

    save(bands, "uint8", 0)
    report = evaluate_cli(tmp_path)
    assert report["class_iou"] == {"10": 1.0, "20": 1.0, "30": 0.0} and report["ground_truth_nodata"] == [0.0]
    assert report["coverage"] == pytest.approx(2 / 3) and report["unmatched_pseudo_labels"] == []
    assert "ground-truth pixels their GeoTIFF declares nodata (0) are left out" in capsys.readouterr().out
    save(np.where(bands == 0, np.nan, bands), "float32", np.nan)  # NaN declared: not refused as a fraction
    report = evaluate_cli(tmp_path)
    assert report["class_iou"] == {"10": 1.0, "20": 1.0, "30": 0.0} and report["ground_truth_nodata"] == ["NaN"]
    save(bands, "uint8", None)  # nothing declared: 0 is a class like any other
    assert evaluate_cli(tmp_path)["class_iou"] == {"0": 1.0, "10": 1.0, "20": 1.0, "30": 0.0}


def test_grey_rgb_and_single_channel_id_maps_keep_their_own_ids(tmp_path):
    """One ground-truth map of ids {0, 1}, another of ids {2, 3} saved as grey RGB: the grey map's ids were
    numbered by colour (0, 1) in the same columns as the first map's, and the first map's classes were lost."""
    bands = np.repeat(np.arange(2), 10)[:, None].repeat(20, axis=1)
    write(tmp_path / "gt" / "a.png", bands)
    Image.fromarray(np.repeat((bands + 2).astype(np.uint8)[..., None], 3, axis=2)).save(tmp_path / "gt" / "b.png")
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", bands + 7)
    write(tmp_path / "out" / "ann_dir" / "train" / "b.png", bands + 9)
    report = evaluate_dataset(tmp_path / "out", tmp_path / "gt")
    assert report.class_iou == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert report.class_to_pseudo_labels == {0: [7], 1: [8], 2: [9], 3: [10]}


def test_colour_coded_and_id_label_maps_are_not_mixed(case):
    """Their ids would collide: colour ids are given in the order colours are first seen."""
    ids = np.asarray(Image.open(case / "gt" / "a.png"))
    Image.fromarray(np.array(list(POTSDAM.values()), np.uint8)[np.minimum(ids, 5)]).save(case / "gt" / "a.png")
    with pytest.raises(AlpsError, match=r"mixes colour-coded \(RGB\) label maps with maps of class ids"):
        evaluate_dataset(case / "out", case / "gt")


def classes_file(path, text):
    path.write_text(text)
    return str(path)


def evaluate_fails(case, *flags):
    """`alps evaluate` with ``flags``: exit 2 and its one error line."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert alps(["evaluate", str(case / "out"), str(case / "gt"), "--json", str(case / "e.json"), *flags]) == 2
    return err.getvalue()


def test_declared_ground_truth_classes_name_the_table_and_refuse_undeclared_ids(case, capsys):
    """`--gt-classes`: the table and the report name each class; an id the file does not declare (another
    dataset's ground truth, a typo) is refused naming the file that holds it, where it was scored as one more
    class; a declared class with no pixel is listed, not silently absent."""
    names = classes_file(case / "c.yaml", "classes: [ground, water, road, roof]\n")
    report = evaluate_cli(case, "--exclude-unlabelled-images", "--gt-classes", names)
    assert report["class_iou"] == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.5}  # the figures do not change
    assert report["ground_truth_names"] == {"0": "ground", "1": "water", "2": "road", "3": "roof"}
    table = capsys.readouterr().out
    assert "\nroad               0.000       -  []  (never labelled)\n" in table
    assert "ground-truth classes: 4 declared in" in table

    three = classes_file(case / "c3.yaml", "classes: [{name: ground, id: 0}, {name: water, id: 1}, "
                                           "{name: road, id: 2}]\n")
    error = evaluate_fails(case, "--gt-classes", three)
    assert f"{case / 'gt' / 'a.png'}: 400 pixels of class id 3, which {three} does not declare" in error
    assert "--ignore-index 3 if it names no class" in error and "Traceback" not in error
    ignored = evaluate_cli(case, "--exclude-unlabelled-images", "--gt-classes", three, "--ignore-index", "3")
    assert ignored["class_iou"] == {"0": 1.0, "1": 1.0, "2": 0.0} and ignored["ground_truth_ignored"] == [3, 255]

    more = classes_file(case / "c5.yaml", "classes: [{name: ground, id: 0}, {name: water, id: 1}, {name: road, "
                                          "id: 2}, {name: roof, id: 3}, {name: pool, id: 9}]\n")
    report = evaluate_cli(case, "--gt-classes", more)
    assert report["classes_absent_from_ground_truth"] == [9] and report["n_classes"] == 4
    assert "declared classes with no ground-truth pixel in these images (not scored): 'pool' (9)" \
        in capsys.readouterr().out


def test_long_class_names_keep_the_tables_columns_aligned(case, capsys):
    """A name longer than the first column's 16 characters shifted its row's figures right of the others'."""
    names = "impervious surfaces (roads and car parks)\nwater\nlow vegetation\nroof\n"
    evaluate_cli(case, "--gt-classes", classes_file(case / "names.txt", names))
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("class ", "impervious", "water", "low veg", "roof", "mIoU",
                                                       "coverage", "pixel accuracy"))]
    assert len(rows) == 9 and len({row.index(".") for row in rows[1:]}) == 1  # the IoU column
    assert rows[0].index("IoU") + 3 == rows[1].index(".") + 4  # under its header


def test_declaring_255_makes_a_binary_masks_foreground_a_class(tmp_path, capsys):
    """A lesion mask of 0 and 255: declaring 255 answers what it is, as --ignore-index none does."""
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 255
    write(tmp_path / "gt" / "a.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.where(gt == 255, 3, 255))
    both = classes_file(tmp_path / "c.yaml", "classes: [{name: background, id: 0}, {name: lesion, id: 255}]\n")
    report = evaluate_cli(tmp_path, "--gt-classes", both)
    assert report["class_iou"] == {"0": 0.0, "255": 1.0} and report["ground_truth_ignored"] == []
    assert "\nlesion             1.000" in capsys.readouterr().out
    background = classes_file(tmp_path / "b.yaml", "classes: [background]\n")
    error = evaluate_fails(tmp_path, "--gt-classes", background)
    assert "a binary mask?" in error and f"declare 255 in {background}" in error


def noisy(rgb, rng, amplitude):
    """``rgb`` with every channel moved by up to ``amplitude``, as JPEG or resampling leave colour masks."""
    return np.clip(rgb.astype(np.int16) + rng.integers(-amplitude, amplitude + 1, rgb.shape), 0, 255).astype(np.uint8)


def test_declared_colours_give_stable_ids_and_noisy_colour_masks_a_tolerance(tmp_path, capsys):
    """DeepGlobe's colour masks are not exactly its 7 colours (its readme: binarise at 128): each noisy colour
    was counted as a class, or past 255 colours the ground truth was refused as "not a label map". Declared
    colours with a tolerance give each noisy pixel its class; without one the file and the colour are named."""
    palette = np.array(list(POTSDAM.values()), np.uint8)
    bands = np.repeat(np.arange(6), 10)[:, None].repeat(60, axis=1)
    clean = palette[bands]
    (tmp_path / "gt").mkdir()
    Image.fromarray(noisy(clean, np.random.default_rng(0), 3)).save(tmp_path / "gt" / "a.png")
    pred = bands + 10
    pred[bands == 2] = 255
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    error = evaluate_fails(tmp_path)
    assert "more than 255 colours" in error and "--gt-colour-tolerance" in error

    # Declared in another order than the colours first appear: the file's order gives the ids.
    order = ["car", "tree", "impervious", "building", "low_vegetation", "clutter"]
    entries = ", ".join(f"{{name: {n}, colour: '#{bytes(POTSDAM[n]).hex()}'}}" for n in order[:-1])
    declared = classes_file(tmp_path / "c.yaml", f"classes: [{entries}, {{name: clutter, colour: [255, 0, 0]}}]\n")
    error = evaluate_fails(tmp_path, "--gt-classes", declared)
    assert f"{tmp_path / 'gt' / 'a.png'}: " in error and f"which {declared} does not declare" in error
    assert "give --gt-colour-tolerance 3;" in error  # the noise's amplitude: every colour of the file within it

    report = evaluate_cli(tmp_path, "--gt-classes", declared, "--gt-colour-tolerance", "3")
    by_name = {report["ground_truth_names"][k]: v for k, v in report["class_iou"].items()}
    assert by_name == {"impervious": 1.0, "building": 1.0, "low_vegetation": 0.0, "tree": 1.0, "car": 1.0,
                       "clutter": 1.0}  # as the clean mask scores
    assert report["ground_truth_names"] == {str(i): n for i, n in enumerate(order)}
    assert report["ground_truth_colours"]["0"] == "#ffff00"  # car: first in the file
    exact = int((noisy(clean, np.random.default_rng(0), 3) == clean).all(-1).sum())
    assert report["ground_truth_pixels_snapped"] == bands.size - exact > 0
    assert "of undeclared colours within 3 of a declared one took its class" in capsys.readouterr().out

    error = evaluate_fails(tmp_path, "--gt-classes", declared, "--gt-colour-tolerance", "128")
    assert "255 apart in a channel" in error and "give at most 127" in error
    error = evaluate_fails(tmp_path, "--gt-colour-tolerance", "3")
    assert "give --gt-classes FILE with {name, colour} entries" in error
    speckled = clean.copy()
    speckled[0, :3] = [[250, 250, 250], [251, 251, 251], [5, 0, 250]]  # three colours of one pixel each
    Image.fromarray(speckled).save(tmp_path / "gt" / "a.png")
    assert evaluate_cli(tmp_path)["ground_truth_rare_colours"] == 3  # still scored as 9 classes, but said
    assert "3 of those colours hold under 0.1% of the pixels each" in capsys.readouterr().out
    ids = classes_file(tmp_path / "ids.yaml", "classes: [a, b, c, d, e, f]\n")
    Image.fromarray(clean).save(tmp_path / "gt" / "a.png")
    assert "is colour-coded (RGB), but" in evaluate_fails(tmp_path, "--gt-classes", ids)
    # The same colours as a palette PNG (indices 5..0 behind them): read by colour once colours are declared.
    indexed = Image.fromarray((5 - bands).astype(np.uint8), mode="P")
    indexed.putpalette(palette[::-1].reshape(-1).tolist())
    indexed.save(tmp_path / "gt" / "a.png")
    by_colour = evaluate_cli(tmp_path, "--gt-classes", declared)
    assert {by_colour["ground_truth_names"][k]: v for k, v in by_colour["class_iou"].items()} == by_name
    assert evaluate_cli(tmp_path)["class_iou"] == {"0": 1.0, "1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0, "5": 1.0}


@pytest.mark.parametrize(("text", "problems"), [
    ("classes: [a, {name: b, id: 1}]\n", ["mixes plain names, {name, id} and {name, colour} entries"]),
    ("classes: [{name: a, id: 1}, {name: b, id: 1}, {name: a, id: 2}, {name: c, id: x}]\n",
     ["id 1 is given to both 'a' and 'b'", "class 'a' is declared twice", "class #4 needs an integer 'id'"]),
    ("classes:\n  - name: urban\n    colour: #00ffff\n  - {name: water, colour: [0, 0, 300]}\n",
     ["class #1 needs a 'colour' as '#rrggbb' (quoted: YAML reads # as a comment)", "class #2 needs a 'colour'"]),
    ("classes: [{name: urban, colour: #00ffff}]\n", ["not valid YAML", "(quote colours, '#rrggbb'"]),
    ("classes: [yes, water]\nnames: [x]\n", ["unknown key(s) ['names']", "class #1 needs a non-empty 'name'",
                                              "got True (quote it"]),
    ("classes: []\n", ["'classes' must be a non-empty list"]),
])
def test_a_ground_truth_classes_file_lists_every_problem(case, text, problems):
    error = evaluate_fails(case, "--gt-classes", classes_file(case / "c.yaml", text))
    assert all(p in error for p in problems), error
    assert "Traceback" not in error


FREESURFER_LUT = """#$Id: FreeSurferColorLUT.txt,v 1.105
#No. Label Name:                            R   G   B   A

0   Unknown                                 0   0   0   0
17  Left-Hippocampus                        220 216 20  0
255 CC_Anterior                             0   0   208 0
""" + "".join(f"{1000 + k}  ctx-lh-region{k}                       25  5   25  0\n" for k in range(36))

ITK_SNAP_LABELS = '''################################################
# ITK-SnAP Label Description File
#    IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
################################################
    0     0    0    0        0  0  0    "Clear Label"
    1   255    0    0        1  1  1    "Liver"
    2     0  255    0        1  1  1    "Left kidney"
'''


def test_a_medical_colour_lookup_table_names_the_classes(tmp_path, capsys):
    """FreeSurfer's, 3D Slicer's and ITK-SNAP's lookup tables are how label volumes name their classes; a plain
    list of names, one per line, gives ids 0, 1, .... A table lists far more classes than one volume holds: the
    absent ones are counted, not printed one by one. FreeSurfer's 255 (CC_Anterior) among 16-bit ids was refused
    until --ignore-index said what it is: the table says it."""
    from alps_client.gt_classes import parse_ground_truth_classes

    gt = np.repeat(np.array([0, 17, 1035, 1002, 255], np.uint16), 5)[:, None].repeat(20, axis=1)
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "a.png")  # 16-bit ids, as FreeSurfer's aparc+aseg has them
    pred = np.repeat(np.array([3, 4, 5, 255, 6], np.uint8), 5)[:, None].repeat(20, axis=1)
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", pred)
    assert "holds 255 among class ids stored in more than 8 bits" in evaluate_fails(tmp_path)
    lut = classes_file(tmp_path / "FreeSurferColorLUT.txt", FREESURFER_LUT)
    report = evaluate_cli(tmp_path, "--gt-classes", lut)
    assert {report["ground_truth_names"][k]: v for k, v in report["class_iou"].items()} == {
        "Unknown": 1.0, "Left-Hippocampus": 1.0, "ctx-lh-region35": 1.0, "ctx-lh-region2": 0.0, "CC_Anterior": 1.0}
    assert report["ground_truth_ignored"] == []
    assert len(report["classes_absent_from_ground_truth"]) == 34
    table = capsys.readouterr().out
    assert "\nLeft-Hippocampus   1.000" in table and "and 22 more (evaluation.json lists them)" in table

    assert parse_ground_truth_classes(classes_file(tmp_path / "labels.txt", ITK_SNAP_LABELS)).names == {
        0: "Clear Label", 1: "Liver", 2: "Left kidney"}
    assert parse_ground_truth_classes(classes_file(tmp_path / "names.txt", "background\nbuilding\n")).names == {
        0: "background", 1: "building"}
    error = evaluate_fails(tmp_path, "--gt-classes", classes_file(tmp_path / "bad.txt", "0 Unknown\n17\nx y\n"))
    assert "line 2: expected a class id then its name" in error and "line 3: expected" in error
    # A name that clears the screen and prints a result of its own in the table (security audit): refused, as a
    # YAML classes file's is
    error = evaluate_fails(tmp_path, "--gt-classes", classes_file(tmp_path / "esc.txt", "0 a\x1b[2Jb 0 0 0 0\n"))
    assert "line 1: class name 'a\\x1b[2Jb' holds a control character" in error and "\x1b" not in error


def test_each_images_figures_find_the_images_that_went_wrong(case, capsys):
    """Dataset figures say how good the labels are, not where they fail: each image's coverage and pixel accuracy
    (under the dataset's matching) are in evaluation.json, worst first, and the worst are named under the table."""
    report = evaluate_cli(case)
    rows = {row["image"]: row for row in report["per_image"]}
    assert [row["image"] for row in report["per_image"]] == ["sub__b", "a"]  # worst first
    assert rows["sub__b"] == {"image": "sub__b", "pixels": 1599, "coverage": 0.0, "pixel_accuracy": 0.0}
    assert rows["a"]["coverage"] == pytest.approx(1199 / 1599)
    assert rows["a"]["pixel_accuracy"] == pytest.approx(999 / 1599)  # classes 0 and 1, one of class 3's clusters
    pixels = sum(row["pixels"] for row in report["per_image"])
    correct = sum(row["pixel_accuracy"] * row["pixels"] for row in report["per_image"])
    assert correct / pixels == pytest.approx(report["pixel_accuracy"])  # the same counts as the dataset's
    assert "lowest pixel accuracy (coverage): sub__b 0.000 (0.000) (every image" in capsys.readouterr().out

    # An image none of whose pixels is scored (ground truth all 255) did nothing wrong: it was named the worst, at
    # pixel accuracy and coverage 0 though every pixel of it was labelled.
    write(case / "gt" / "void.png", np.full((40, 40), 255))
    write(case / "out" / "ann_dir" / "val" / "void.png", np.full((40, 40), 5))
    report = evaluate_cli(case)
    assert report["per_image"][-1] == {"image": "void", "pixels": 0, "coverage": None, "pixel_accuracy": None}
    assert [row["image"] for row in report["per_image"]] == ["sub__b", "a", "void"]
    assert "void" not in capsys.readouterr().out


def test_a_colour_to_ignore_is_refused_for_ground_truth_of_class_ids(case, capsys):
    """--ignore-index '#000000' on ground truth of class ids ignored nothing, not even its 255, which was then
    scored as one more class: a lower mIoU and no error. Ids stored as grey RGB pixels are ids too."""
    assert evaluate_cli(case)["ground_truth_ignored"] == [255]
    error = evaluate_fails(case, "--ignore-index", "#000000")
    assert "--ignore-index #000000 names a colour, but the ground truth under" in error
    assert "holds class ids, not colours: give the id to ignore" in error
    for path in (case / "gt").rglob("*.png"):
        ids = np.asarray(Image.open(path))
        Image.fromarray(np.repeat(ids[..., None], 3, axis=2)).save(path)
    assert "holds class ids (RGB label maps of greys" in evaluate_fails(case, "--ignore-index", "#000000")
    classes = case / "classes.yaml"
    classes.write_text("classes: [a, b, c, d]\n")
    assert "classes.yaml declares class ids, not colours" in evaluate_fails(
        case, "--ignore-index", "#000000", "--gt-classes", str(classes))


def test_a_label_map_over_pils_own_pixel_limit_is_read_as_alps_run_reads_images(tmp_path, monkeypatch):
    """A 14000 x 14000 ground-truth PNG (a scene `alps run --tile` labels) was refused as a DecompressionBombError,
    and one over 89 Mpx printed PIL's warning above the table. PIL's limit is lowered here in its place."""
    import warnings

    from alps_client.evaluate.ground_truth import read_array
    from alps_client.io import readers

    truth = np.zeros((100, 120), np.uint8)
    truth[50:] = 1
    Image.fromarray(truth).save(tmp_path / "scene.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # below the map (12,000 px): PIL alone refuses it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arr, _, _ = read_array(tmp_path / "scene.png")
    assert np.array_equal(arr, truth) and Image.MAX_IMAGE_PIXELS == 2_000  # read; PIL's setting given back
    monkeypatch.setattr(readers, "MAX_PIL_PIXELS", 10_000)  # alps run's own limit, below the map
    with pytest.raises(AlpsError, match=r"scene\.png: a label map of more than 0 Mpx, which PIL decodes whole: save "
                                        r"it as a GeoTIFF"):
        read_array(tmp_path / "scene.png")


def test_nifti_ground_truth_with_a_lying_header_is_named_and_a_series_gives_its_first_volume(tmp_path):
    """A .nii.gz ground truth declaring 4000^3 voxels ended `alps evaluate` in a MemoryError given as "not a readable
    NIfTI volume"; a 4-D ground truth was decoded whole before its first volume was taken."""
    import gzip

    import nibabel

    from alps_client.evaluate.ground_truth import ColourIds, read_ground_truth

    series = np.zeros((6, 5, 4, 3), np.uint8)
    series[..., 0] = 1
    series[..., 1:] = 2
    nibabel.save(nibabel.Nifti1Image(series, np.eye(4)), str(tmp_path / "series.nii.gz"))
    read = read_ground_truth(tmp_path / "series.nii.gz", ColourIds())
    assert read.ids.shape == (6, 5, 4) and set(np.unique(read.ids).tolist()) == {1}
    raw = bytearray(gzip.decompress((tmp_path / "series.nii.gz").read_bytes()))
    raw[40:50] = np.array([3, 4000, 4000, 4000, 1], "<i2").tobytes()  # dim[0..4] of the NIfTI-1 header
    (tmp_path / "lying.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(AlpsError, match=rf"lying\.nii\.gz: its header declares 4000 x 4000 x 4000 voxels.*"
                                        rf"decompressed holds {len(raw)} bytes"):
        read_ground_truth(tmp_path / "lying.nii.gz", ColourIds())


def test_tiff_ground_truth_is_read_as_alps_run_reads_its_image(tmp_path):
    """A plain TIFF's Orientation tag turns it, as `alps run` turns the image it labels; a georeferenced one is read
    as stored. A TIFF named in bytes that are not UTF-8 failed inside rasterio ("not a readable label map
    (UnicodeEncodeError ...)"): it is refused by what GDAL cannot do."""
    import os

    from alps_client.evaluate.ground_truth import read_array

    ids = np.zeros((6, 10), np.uint8)
    ids[0, :3] = 1  # top left
    Image.fromarray(ids).save(tmp_path / "turned.tif", tiffinfo={0x0112: 6})
    Image.fromarray(ids).save(tmp_path / "placed.tif", tiffinfo={0x0112: 6, 33550: (1.0, 1.0, 0.0),
                                                                 33922: (0.0, 0.0, 0.0, 5e5, 4.6e6, 0.0)})
    turned, _, _ = read_array(tmp_path / "turned.tif")
    assert turned.shape == (10, 6) and np.array_equal(turned, np.rot90(ids, -1))
    assert np.array_equal(read_array(tmp_path / "placed.tif")[0], ids)
    # PNG and the other formats PIL reads: turned by their EXIF orientation too (they were read as stored, so a
    # square label map of a turned image scored against its truth turned the other way, unsaid)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(ids).save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(np.stack([ids * 200] * 3, -1)).save(tmp_path / "turned_rgb.png", exif=exif)
    assert np.array_equal(read_array(tmp_path / "turned.png")[0], np.rot90(ids, -1))
    assert np.array_equal(read_array(tmp_path / "turned_rgb.png")[0][..., 1], np.rot90(ids * 200, -1))
    square = np.zeros((8, 8), np.uint8)
    square[:2, :5] = 1
    write(tmp_path / "case" / "out" / "ann_dir" / "train" / "a.png", np.rot90(square, -1))  # as alps run labels it
    (tmp_path / "case" / "gt").mkdir()
    Image.fromarray(square).save(tmp_path / "case" / "gt" / "a.png", exif=exif)
    assert evaluate_dataset(tmp_path / "case" / "out", tmp_path / "case" / "gt").miou == 1.0  # 0.36 as stored
    latin1 = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.tif"))
    Image.fromarray(ids).save(latin1)
    with pytest.raises(AlpsError, match=r"caf\udce9\.tif: GDAL .* opens no file whose name is not UTF-8"):
        read_array(latin1)


def test_a_binary_mask_saved_as_jpeg_is_refused_and_read_through_its_two_colours(tmp_path, capsys):
    """Kvasir-SEG's masks are JPEG: compression spreads a 0/255 mask's edges over dozens of values. Each was scored
    as a class, and the foreground's 255 ignored: mIoU 0.02 for perfect labels, with only the generic lossy
    warning (mutation audit). Refused now, saying how to read it; the way it says gives the true figures."""
    yy, xx = np.mgrid[:64, :64]
    polyp = (yy - 30) ** 2 + (xx - 34) ** 2 < 18**2
    gt = np.where(polyp, 255, 0).astype(np.uint8)
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "a.jpg", quality=75)  # mode L, as Kvasir's read
    noisy = np.asarray(Image.open(tmp_path / "gt" / "a.jpg"))
    assert len(np.unique(noisy)) > 5  # the case: values between 0 and 255
    write(tmp_path / "out" / "ann_dir" / "train" / "a.png", np.where(polyp, 3, 1))  # perfect labels
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "holds 0 and 255 and" in err and "a binary mask whose edges the compression blurred?" in err
    assert "--gt-classes FILE --gt-colour-tolerance 127" in err and str(tmp_path / "gt" / "a.jpg") in err
    (tmp_path / "classes.yaml").write_text("classes: [{name: background, colour: '#000000'}, "
                                           "{name: polyp, colour: '#ffffff'}]\n")
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt"), "--ignore-index", "none"]) == 2
    assert "would be scored as a class. Declare" in capsys.readouterr().err  # 255 is a class there: not "ignored"
    # the same mask saved as PNG beside it (masks of two sources): read through the same two colours
    write(tmp_path / "gt" / "b.png", gt)
    write(tmp_path / "out" / "ann_dir" / "train" / "b.png", np.where(polyp, 3, 1))
    report = evaluate_cli(tmp_path, "--gt-classes", str(tmp_path / "classes.yaml"), "--gt-colour-tolerance", "127")
    assert report["miou"] == 1.0 and report["class_to_pseudo_labels"] == {"0": [1], "1": [3]}
    assert report["ground_truth_pixels_snapped"] > 0 and report["n_images"] == 2
    # Ground truth of class ids with a small class of its own is no blurred mask: scored as before
    ids = gt.copy()
    ids[:6, :12] = 7  # 1.8 % of the pixels
    Image.fromarray(ids).save(tmp_path / "gt" / "a.jpg", quality=100)
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt"), "--ignore-index", "none",
                 "--json", str(tmp_path / "ids.json")]) == 0
    # nor are lossless maps of rare classes, 0 and 255 beside a JPEG of other values: judged on the JPEG's pixels
    rare = np.zeros((64, 64), np.uint8)
    rare[:4], rare[10, :20], rare[20, :20] = 255, 1, 2  # 255 ignored; classes 1 and 2 under 1 % each
    write(tmp_path / "gt" / "a.png", rare)
    (tmp_path / "gt" / "a.jpg").unlink()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "gt" / "c.jpg")  # no pseudo-label: left out
    assert alps(["evaluate", str(tmp_path / "out"), str(tmp_path / "gt"), "--ignore-index", "255",
                 "--exclude-unlabelled-images", "--json", str(tmp_path / "rare.json")]) == 0
