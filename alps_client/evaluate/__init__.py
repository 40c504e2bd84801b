"""``alps evaluate``: pseudo-labels against ground truth, every ground-truth class and every miss counted.

Pseudo-label ids are cluster (or class) ids unrelated to the ground truth's, so they are first matched to
ground-truth classes on the dataset-wide confusion of labelled pixels:

- ``hungarian`` (default): one-to-one, maximising matched pixels (scipy's ``linear_sum_assignment``); with more
  clusters than classes the unmatched clusters' pixels count as errors.
- ``majority``: each cluster goes to the class it overlaps most (many-to-one), the usual upper bound when N > K.

Figures (ground-truth 255 pixels are ignored everywhere, and those of ``ignore_index`` when given, one value or
several: a dataset's "unlabelled" or no-data value, such as LoveDA's 0; with ``ignore_index="none"`` no value is,
255 being a class):

- ``miou``: mean IoU over **every** ground-truth class, pixels the pipeline left unlabelled (255) counted as misses;
  a class that never received a pseudo-label scores 0. This is the headline figure.
- ``miou_labelled_pixels``: the same mean computed only on pixels that received a pseudo-label (how good the labels
  are where there are labels). A class with no labelled pixel and none labelled as it has 0/0 there: its
  ``class_iou_labelled_pixels`` is None and the mean leaves it out (``miou`` counts it as 0); None if every class is.
- ``coverage``: share of ground-truth pixels that received a pseudo-label.
- ``pixel_accuracy``: correctly labelled pixels / ground-truth pixels (unlabelled = wrong), and over labelled
  pixels only.

``per_image`` gives each image's coverage and pixel accuracy under the dataset's matching, worst first: where
the labels fail (an image none of whose pixels is scored, all ignored or nodata, comes last with both null).

Ground-truth images with no pseudo-label at all (e.g. rejected inputs) count as entirely unlabelled, unless
``exclude_unlabelled_images`` is set; they are listed either way. A ground-truth file paired with no pseudo-label
that looks like the truth of one paired with none (its name in another folder, in another case, or with a suffix
the others lack) is refused, saying how to pair it: it would be scored as two total misses.

Colour-coded ground truth (an RGB colour per class: ISPRS Potsdam and Vaihingen, DeepGlobe) counts every colour
as a class (:class:`ColourIds`); ``ignore_index`` may name one as ``#rrggbb``.

A ground-truth classes file (``gt_classes``, :mod:`alps_client.gt_classes`) names the classes and declares them
all: a value it does not declare is refused (naming the file), colour-coded classes take its ids, and with
``colour_tolerance`` a noisy colour takes the class of the declared colour it is near.

Pixels a single-band GeoTIFF declares nodata (ESA WorldCover's 0) are left out of every figure (no class, no
miss), whatever ``ignore_index`` says; ``ground_truth_nodata`` lists the values. So are NaN pixels of float ground
truth that declares no nodata (``ground_truth_nan_pixels`` counts them).

Ground truth holding only 0 and 255 is refused unless ``ignore_index`` is given: a binary mask (buildings,
polyps, lesions, vessels: foreground 255) would otherwise be scored on its background alone, its foreground
ignored as "no label", and a single class reported without a word. So is ground truth holding 255 among ids
stored in more than 8 bits (16-bit PNG or TIFF, NIfTI of int16 or float): its ids are not bound to 0..254, and
255 may be a class (FreeSurfer's CC_Anterior). Class ids are any integers (FreeSurfer's aparc+aseg reaches 2035);
floats must hold whole numbers (or NaN: no label).

The package: :mod:`.scores` (confusion, matching, figures), :mod:`.ground_truth` (reading ground truth: class ids,
colours, nodata, ignored values), :mod:`.pairing` (which ground-truth file is which image's), :mod:`.dataset`
(:func:`evaluate_dataset`) and :mod:`.table` (the printed table and ``evaluation.json``).
"""

from alps_client.evaluate.dataset import evaluate_dataset
from alps_client.evaluate.scores import Confusion, EvalReport, Matching, match_clusters, scores
from alps_client.evaluate.table import format_table, write_report

__all__ = ["Confusion", "EvalReport", "Matching", "evaluate_dataset", "format_table", "match_clusters", "scores",
           "write_report"]
