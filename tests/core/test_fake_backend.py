"""The numpy fake SAM: selected by its repository's manifest, SAM's frames, masks of the shapes it is shown."""

from __future__ import annotations

import numpy as np
import pytest

from alps_client.amg.generator import MaskGenerator
from alps_client.backends import make_backend
from alps_client.backends.fake import FakeSamBackend, write_fake_repository
from alps_client.config import AmgConfig, BackendConfig
from alps_client.errors import ModelRepositoryError
from tests.shapes import make_shapes_scene


def test_fake_repository_selects_the_fake_and_only_embedded(tmp_path):
    repo = write_fake_repository(tmp_path / "fake", prompt_batch_size=16)
    backend = make_backend(BackendConfig(model_repository=str(repo)))
    assert isinstance(backend, FakeSamBackend) and backend.prompt_batch_size == 16
    assert backend.manifest.is_stand_in and backend.manifest.model_type == "fake"
    with pytest.raises(ModelRepositoryError, match="FAKE"):
        make_backend(BackendConfig(kind="triton", model_repository=str(repo)))


def test_a_missing_repository_names_the_flag_as_well_as_the_export(tmp_path):
    """Run outside the project, the default ``model_repository`` is looked for in the current folder: the way out
    may be the flag, not a new export."""
    with pytest.raises(ModelRepositoryError, match=rf"no model repository at '{tmp_path}' \(manifest.json missing\): "
                                                   r"give the folder .*\(--model-repository.* or build one there"):
        make_backend(BackendConfig(model_repository=str(tmp_path)))


def test_fake_finds_each_shape_as_one_confident_mask(fake_backend):
    image, shapes = make_shapes_scene(seed=1, size=(160, 224))
    records = MaskGenerator(fake_backend, AmgConfig(points_per_side=16)).generate(image)
    masks = np.stack([r["segmentation"] for r in records])
    for shape in shapes:
        iou = (masks & shape).sum(axis=(1, 2)) / (masks | shape).sum(axis=(1, 2))
        assert iou.max() >= 0.85  # boundaries are off by about a pixel (edges split between regions)
    again = MaskGenerator(fake_backend, AmgConfig(points_per_side=16)).generate(image)
    assert [r["bbox"] for r in again] == [r["bbox"] for r in records]


def test_fake_embedding_frames_match_sam(fake_backend):
    image, _ = make_shapes_scene(seed=2, size=(100, 300))
    (embedding,) = fake_backend.encode([image])
    assert embedding.features.shape == (256, 64, 64) and embedding.features.dtype == np.float32
    assert embedding.input_size == (341, 1024) and embedding.original_size == (100, 300)
    out = fake_backend.decode(embedding, np.array([[[500.0, 100.0]]], np.float32), np.ones((1, 1), np.float32))
    assert out.low_res_masks.shape == (1, 3, 256, 256) and out.iou_predictions.shape == (1, 3)
    assert (out.low_res_masks[:, :, 86:] < 0).all()  # nothing below the valid (resized) region: padding is black


def test_fake_embedding_is_the_block_colours_and_cell_statistics_the_module_describes():
    """The integer sums of ``fake_features`` against the plain float64 restatement of its docstring."""
    from alps_client.backends.fake import _projection, colour_frame, fake_features

    rng = np.random.default_rng(4)
    padded = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    padded[:512] = padded[:512] // 64 * 64  # flat areas too: a spread of exactly 0
    features = fake_features(padded)
    x = padded.astype(np.float64) / 255.0
    blocks = x.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(colour_frame(features), blocks, atol=1e-6)
    cells = x.reshape(64, 16, 64, 16, 3)
    stats = np.concatenate([cells.mean(axis=(1, 3)), cells.std(axis=(1, 3))], axis=-1)
    np.testing.assert_allclose(features[48:], np.einsum("cs,hws->chw", _projection(), stats), atol=1e-5)


def test_fake_masks_follow_the_first_foreground_point_of_each_prompt(fake_backend):
    """Points in one region and tile share their masks (cached, never written through); a background-only prompt
    gives nothing; a point in the next tile of the same region cuts a different sub-part."""
    image = np.zeros((256, 256, 3), np.uint8)
    image[:, 128:] = 200  # two halves; the bright one crosses the 64-px tiles of the low-res frame (256 px of 1024)
    (embedding,) = fake_backend.encode([image])
    coords = np.array([[[600.0, 100.0]], [[610.0, 120.0]], [[600.0, 400.0]], [[10.0, 10.0]]], np.float32)
    labels = np.array([[1.0], [1.0], [1.0], [0.0]], np.float32)
    out = fake_backend.decode(embedding, coords, labels)
    masks = out.low_res_masks > 0
    assert out.low_res_masks.flags.writeable
    assert (masks[0] == masks[1]).all() and (out.iou_predictions[0] == out.iou_predictions[1]).all()
    part = masks[0, 1]
    assert (part == masks[2, 1]).all() and part[:, 130:].all() and not part[:, :126].any()
    tiles = np.zeros((2, 256, 256), bool)
    tiles[0, :64, 128:192] = tiles[1, 64:128, 128:192] = True  # the tiles of points 0 and 2 (low-res frame)
    assert (masks[0, 0] == part & tiles[0]).all() and (masks[2, 0] == part & tiles[1]).all()
    assert not masks[3].any() and (out.iou_predictions[3] == 0).all()
    out.low_res_masks[0] = 0  # the caller owns its output: the next decode is unchanged
    again = fake_backend.decode(embedding, coords[:1], labels[:1])
    assert (again.low_res_masks[0] > 0).sum() == masks[0].sum()
    # the SamBackend protocol's order (mask_input before iou_threshold): the fake took a 4th argument as the threshold
    assert (fake_backend.decode(embedding, coords[:1], labels[:1], None, 0.5).low_res_masks == again.low_res_masks).all()
    with pytest.raises(ValueError, match="mask_input is a SAM 2 decoder input"):
        fake_backend.decode(embedding, coords[:1], labels[:1], np.zeros((1, 1, 256, 256), np.float32))


@pytest.mark.parametrize(
    ("image", "message"),
    [  # each ended in numpy (a ZeroDivisionError, an AttributeError) or said the shape without the way to fix it
        (np.zeros((0, 64, 3), np.uint8), r"at least one row and one column, got shape \(0, 64, 3\)"),
        (np.zeros((8, 8), np.uint8).tolist(), r"a numpy array, .* got list: np\.asarray\(image, dtype=np\.uint8\)"),
        (np.zeros((8, 8), np.uint8), r"got shape \(8, 8\) dtype uint8 \(grey: np\.dstack\(\[image\] \* 3\)\)"),
        (np.zeros((8, 8, 4), np.uint8), r"\(RGBA: image\[\.\.\., :3\]\)"),
        (np.zeros((8, 8, 3), np.float32), r"dtype float32 \(another dtype: scale to 0\.\.255, then \.astype"),
    ],
)
def test_an_image_of_another_form_is_refused_saying_how_to_convert_it(fake_backend, image, message):
    with pytest.raises(ValueError, match=r"^image must .*" + message):
        MaskGenerator(fake_backend, AmgConfig(points_per_side=4)).generate(image)


def test_library_misuses_are_named(fake_repo, monkeypatch):
    """One image given to encode (its rows were taken for images), dense or MaskSet masks given to the pooling,
    centroids of another width, no shard at all: each failed deep in numpy, or said something untrue."""
    from alps_client.config import ClusterConfig
    from alps_client.labels.clustering import assign_clusters, fit_centroids
    from alps_client.labels.features import pool_mask_features

    image, _ = make_shapes_scene(seed=3, size=(64, 64))
    closed = []
    monkeypatch.setattr(FakeSamBackend, "close", lambda self: closed.append(self))
    with make_backend(BackendConfig(model_repository=str(fake_repo))) as backend:
        with pytest.raises(ValueError, match=r"encode takes a list .* got one array of shape \(64, 64, 3\): give "):
            backend.encode(image)
        result = MaskGenerator(backend, AmgConfig(points_per_side=4)).generate_masks(image)
        assert len(result.masks) > 0
        for masks in (result.masks, [np.ones((64, 64), bool)]):
            with pytest.raises(ValueError, match=r"sequence of COCO RLEs .* give a MaskSet's \.rles"):
                pool_mask_features(result.embedding, masks)
        assert pool_mask_features(result.embedding, result.masks.rles).shape == (len(result.masks), 256)
    assert closed == [backend]  # a backend is a context manager: the block closed it
    with pytest.raises(ValueError, match=r"as many columns, got \(2, 256\) and \(3, 10\)"):
        assign_clusters(np.zeros((2, 256), np.float32), np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match="no shard to cluster"):  # said "kept no mask in any of the 0 image(s)"
        fit_centroids([], ClusterConfig())


def test_prompts_are_placed_in_the_frame_of_the_models_own_input_size(fake_backend):
    """The grid's points were mapped to a 1024-px frame whatever the repository's ``image_size``, where the encoder
    and the upscaling used the manifest's (code review)."""
    import dataclasses

    from alps_client.amg import MaskGenerator
    from alps_client.config import AmgConfig

    class Seen(Exception):
        pass

    class SmallerInput:  # the fake, but for a model of 512-px input
        manifest = dataclasses.replace(fake_backend.manifest, image_size=512)
        prompt_batch_size = fake_backend.prompt_batch_size

        def encode(self, images):
            return fake_backend.encode(images)

        def decode(self, embedding, point_coords, point_labels, mask_input=None, iou_threshold=None):
            raise Seen(point_coords)

    with pytest.raises(Seen) as seen:
        MaskGenerator(SmallerInput(), AmgConfig(points_per_side=4)).generate(np.zeros((200, 100, 3), np.uint8))
    coords = seen.value.args[0]
    assert coords.shape[1:] == (1, 2) and coords[..., 0].max() < 256 and coords[..., 1].max() < 512
    assert coords[..., 1].max() > 384  # the grid's last row, 7/8 down a 512-px side
