"""Exporter: the real checkpoint path on a tiny SAM, the stand-in, manifest/config contents, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from export.export_sam import TINY_TEST_ARGS, ExportError, load_model
from export.tv_shim import install_torchvision_shim
from tests.conftest import REPO_ROOT, exports_copied_from
from tests.shapes import make_shapes_scene

install_torchvision_shim()
from segment_anything import SamPredictor  # noqa: E402
from segment_anything.build_sam import _build_sam  # noqa: E402


def test_tiny_sam_checkpoint_exports_with_parity(tiny_repo, tiny_checkpoint):
    manifest = json.loads((tiny_repo / "manifest.json").read_text())
    assert manifest["model_type"] == "tiny-test" and not manifest["is_stand_in"] and not manifest["random_init"]
    assert manifest["note"] == "tiny TEST configuration of SAM (tests only), not a released SAM"  # was "SAM"
    assert set(manifest["parity"]) >= {"encoder_max_rel_diff", "decoder_masks_max_abs_diff", "decoder_iou_max_abs_diff"}
    import hashlib

    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def test_each_model_config_names_its_files_sha256_once(tiny_repo, tiny_int8_repo):
    """What a Triton client compares with its manifest; the int8 repository's encoder is stamped again, not twice."""
    from alps_client.backends.manifest import SHA256_PARAMETER

    fp32 = json.loads((tiny_repo / "manifest.json").read_text())["models"]
    int8 = json.loads((tiny_int8_repo / "manifest.json").read_text())["models"]
    assert fp32["encoder"]["sha256"] != int8["encoder"]["sha256"]
    for repo, models in ((tiny_repo, fp32), (tiny_int8_repo, int8)):
        for model in models.values():
            config = (repo / model["name"] / "config.pbtxt").read_text()
            assert config.count(SHA256_PARAMETER) == 1 and f'string_value: "{model["sha256"]}"' in config
    # int8 activations are scaled over the whole batch: Triton must not batch one image's request with another's
    batched = {repo: (repo / "sam_encoder" / "config.pbtxt").read_text() for repo in (tiny_repo, tiny_int8_repo)}
    assert "dynamic_batching {" in batched[tiny_repo] and "max_queue_delay_microseconds" in batched[tiny_repo]
    assert "dynamic_batching {" not in batched[tiny_int8_repo] and "max_batch_size: 4" in batched[tiny_int8_repo]


def test_an_int8_embedding_depends_on_its_batch_where_fp32_does_not(tiny_repo, tiny_int8_repo):
    """Why the int8 encoder is not batched by Triton: the same image alone and beside another."""
    import onnxruntime as ort

    image, _ = make_shapes_scene(seed=3, size=(1024, 1024))
    other = np.full_like(image, 255)  # another range of activations in the same batch
    spread = {}
    for repo in (tiny_repo, tiny_int8_repo):
        session = ort.InferenceSession(str(repo / "sam_encoder" / "1" / "model.onnx"))
        size = np.array([[1024, 1024]], np.int64)
        (alone,) = session.run(None, {"images": image[None], "input_size": size})
        (pair,) = session.run(None, {"images": np.stack([image, other]), "input_size": np.repeat(size, 2, 0)})
        spread[repo] = float(np.abs(pair[0] - alone[0]).max() / np.abs(alone[0]).max())
    assert spread[tiny_repo] < 1e-4 < spread[tiny_int8_repo], spread


def test_parity_check_rejects_an_onnx_model_that_disagrees(tiny_repo, tiny_checkpoint):
    """The check the exporter relies on fails when PyTorch and the ONNX files differ (here: one decoder weight)."""
    from export import onnx_export

    sam = _build_sam(checkpoint=str(tiny_checkpoint), **TINY_TEST_ARGS).eval()
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[-1].bias += 0.01
    manifest = json.loads((tiny_repo / "manifest.json").read_text())
    paths = [tiny_repo / manifest["models"][k]["path"] for k in ("encoder", "decoder")]
    with pytest.raises(Exception, match="parity"):
        onnx_export.check_parity(sam, *paths)


def test_embedded_backend_matches_meta_predictor_on_tiny_sam(tiny_repo, tiny_checkpoint):
    """Our client-side resize + ONNX encoder/decoder reproduce SamPredictor.set_image / predict_torch."""
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.backends.preprocess import apply_coords
    from alps_client.config import BackendConfig

    image, _ = make_shapes_scene(seed=3, size=(150, 230))
    backend = EmbeddedBackend(BackendConfig(model_repository=str(tiny_repo), num_threads=2))
    (embedding,) = backend.encode([image])
    sam = _build_sam(checkpoint=str(tiny_checkpoint), **TINY_TEST_ARGS).eval()
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    theirs = predictor.features.numpy()[0]
    rel = np.abs(embedding.features - theirs).max() / np.abs(theirs).max()
    assert rel <= 1e-3
    assert embedding.input_size == tuple(predictor.input_size)
    assert embedding.original_size == tuple(predictor.original_size)

    points = np.array([[30.0, 40.0], [200.0, 100.0], [115.0, 75.0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((3, 1), np.float32)
    ours = backend.decode(embedding, coords, labels)
    with torch.no_grad():
        _, their_iou, their_low = predictor.predict_torch(
            torch.as_tensor(coords), torch.as_tensor(labels), multimask_output=True, return_logits=True
        )
    assert ours.low_res_masks.shape == (3, 3, 256, 256)
    np.testing.assert_allclose(ours.low_res_masks, their_low.numpy(), atol=1e-3)
    np.testing.assert_allclose(ours.iou_predictions, their_iou.numpy(), atol=1e-4)


def test_int8_export_is_quantized_measured_and_close_to_fp32(tiny_repo, tiny_int8_repo):
    """int8 weights (the step behind ``--quantize int8``): MatMulInteger graphs, agreement figures in the manifest,
    masks close to fp32."""
    import hashlib

    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.backends.preprocess import apply_coords
    from alps_client.config import BackendConfig

    out = tiny_int8_repo
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8-dynamic"
    figures = manifest["quantization"]["agreement_vs_fp32"]
    assert figures["prompts"] == 64 and 0.9 <= figures["mask_iou_mean"] <= 1.0
    assert figures["mask_iou_min"] <= figures["mask_iou_mean"]
    fp32_manifest = json.loads((tiny_repo / "manifest.json").read_text())
    assert fp32_manifest["precision"] == "fp32" and fp32_manifest["quantization"] is None
    for role in ("encoder", "decoder"):
        path = out / manifest["models"][role]["path"]
        assert manifest["models"][role]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    encoder_ops = {node.op_type for node in onnx.load(str(out / manifest["models"]["encoder"]["path"])).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= encoder_ops
    # The decoder stays fp32 (its int8 form is no faster and moves the predicted IoUs): the very same file.
    assert manifest["models"]["decoder"]["sha256"] == fp32_manifest["models"]["decoder"]["sha256"]
    assert manifest["quantization"]["models"] == ["encoder"]
    assert not list(out.glob("**/*.onnx.data")) and not list(out.glob(".export-*"))
    encoder_bytes = (out / manifest["models"]["encoder"]["path"]).stat().st_size
    assert encoder_bytes < (tiny_repo / fp32_manifest["models"]["encoder"]["path"]).stat().st_size

    image, _ = make_shapes_scene(seed=3, size=(150, 230))
    points = np.array([[30.0, 40.0], [200.0, 100.0], [115.0, 75.0], [60.0, 120.0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((4, 1), np.float32)
    masks = {}
    for name, repo in (("fp32", tiny_repo), ("int8", out)):
        backend = EmbeddedBackend(BackendConfig(model_repository=str(repo), num_threads=2))
        assert backend.manifest.precision == name if name == "fp32" else backend.manifest.precision == "int8-dynamic"
        (embedding,) = backend.encode([image])
        masks[name] = backend.decode(embedding, coords, labels).low_res_masks > 0
    inter = (masks["fp32"] & masks["int8"]).sum()
    union = (masks["fp32"] | masks["int8"]).sum()
    assert union > 0 and inter / union >= 0.9


def test_quantize_in_place_replaces_only_the_encoder(tiny_repo, tiny_int8_repo, tmp_path, monkeypatch):
    """``export_sam.py --quantize int8``'s last step, on a copy of an fp32 export: the encoder file becomes int8,
    the decoder stays the very fp32 file, and no scratch file is left beside them.

    The quantisation itself is ``tiny_int8_repo``'s (the same ``quantize_encoder`` of the same export, checked by
    the tests that use it): its int8 encoder is what the step is handed here, instead of quantising again."""
    import copy
    import hashlib
    import shutil

    from export import export_sam

    int8_manifest = json.loads((tiny_int8_repo / "manifest.json").read_text())

    def quantize_encoder(encoder32, encoder8, fp32_decoder, log):
        assert (encoder32, fp32_decoder) == (encoder, decoder)  # the fp32 pair, measured before it is replaced
        encoder8.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_int8_repo / int8_manifest["models"]["encoder"]["path"], encoder8)
        return copy.deepcopy(int8_manifest["quantization"])  # a record of its own: the step may not change it

    monkeypatch.setattr(export_sam, "quantize_encoder", quantize_encoder)
    repo = shutil.copytree(tiny_repo, tmp_path / "repo")
    manifest = json.loads((repo / "manifest.json").read_text())
    encoder, decoder = (repo / manifest["models"][k]["path"] for k in ("encoder", "decoder"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (encoder, decoder)}
    quantization = export_sam._quantize_in_place(encoder, decoder, tmp_path / "scratch", log=lambda *_: None)
    measured = json.loads((tiny_int8_repo / "manifest.json").read_text())["quantization"]
    assert quantization == measured  # what quantize_encoder measured, passed on as it is
    assert hashlib.sha256(decoder.read_bytes()).hexdigest() == before[decoder]
    assert hashlib.sha256(encoder.read_bytes()).hexdigest() != before[encoder]
    assert "MatMulInteger" in {node.op_type for node in onnx.load(str(encoder)).graph.node}
    assert not list((tmp_path / "scratch").iterdir())
    fp32_folder = tiny_repo / encoder.parent.relative_to(repo)
    assert sorted(p.name for p in encoder.parent.iterdir()) == sorted(p.name for p in fp32_folder.iterdir())


def test_int8_without_cpu_gets_cpu_instance_groups_and_says_so(stand_in_repo, tmp_path, monkeypatch):
    """int8's ops run on the CPU, but `--quantize int8` without `--cpu` wrote KIND_GPU for both models, unsaid (and
    a Triton without GPUs does not load them). The quantisation itself is stubbed: the step under test is the kind."""
    from export import export_sam, onnx_export

    exports_copied_from(monkeypatch, onnx_export, stand_in_repo)
    monkeypatch.setattr(export_sam, "_quantize_in_place", lambda *args: {"models": ["encoder"], "stub": True})
    said: list[str] = []
    manifest = export_sam.run_export("stand-in", tmp_path / "repo", quantize="int8", cpu=False, log=said.append)
    assert ("--quantize int8 implies --cpu: Triton instance groups on CPU (KIND_CPU), where int8's ops run; for a GPU "
            "server, export without --quantize (fp32).") in said
    assert manifest["export"]["instance_kind"] == "KIND_CPU" and manifest["precision"] == "int8-dynamic"
    for model in ("sam_encoder", "sam_decoder"):
        config = (tmp_path / "repo" / model / "config.pbtxt").read_text()
        assert "kind: KIND_CPU" in config and "KIND_GPU" not in config
    assert "dynamic_batching {" not in (tmp_path / "repo" / "sam_encoder" / "config.pbtxt").read_text()


def test_exported_files_do_not_record_where_the_exporter_lies(stand_in_repo):
    """Each node named the exporter's file and line it was traced at: the same model exported from two checkouts
    (or before and after an upgrade that moved a line) got two sha256s, and `alps run` refused the datasets of the
    first as labelled by another model."""
    import onnx

    for model in ("sam_encoder", "sam_decoder"):
        graph = onnx.load(str(stand_in_repo / model / "1" / "model.onnx"), load_external_data=False).graph
        recorded = [prop.value for node in graph.node for prop in node.metadata_props]
        assert recorded and not any('File "' in value or ".py" in value for value in recorded), model


def test_stand_in_point_returns_its_shape(embedded_backend):
    """A point inside a shape gives that shape (IoU >= 0.9), and the IoU prediction ranks it first."""
    from alps_client.backends.preprocess import apply_coords
    from export.stand_in import build_stand_in_sam

    image, shapes = make_shapes_scene(seed=1, size=(192, 256))
    (embedding,) = embedded_backend.encode([image])
    sam = build_stand_in_sam()
    for mask in shapes:
        ys, xs = np.nonzero(mask)
        centre = np.array([[xs.mean(), ys.mean()]])
        if not mask[int(centre[0, 1]), int(centre[0, 0])]:
            continue
        coords = apply_coords(centre, image.shape[:2]).astype(np.float32)[None]
        out = embedded_backend.decode(embedding, coords, np.ones((1, 1), np.float32))
        with torch.no_grad():
            full = sam.postprocess_masks(torch.as_tensor(out.low_res_masks), embedding.input_size, image.shape[:2])
        pred = full.numpy()[0] > 0
        best = int(np.argmax(out.iou_predictions[0]))
        iou = (pred[best] & mask).sum() / (pred[best] | mask).sum()
        assert iou >= 0.9, f"shape at {centre}: IoU {iou:.3f}"


def test_manifest_and_configs_match_onnx_files(stand_in_repo):
    manifest = json.loads((stand_in_repo / "manifest.json").read_text())
    assert manifest["is_stand_in"] and "not SAM" in manifest["note"]
    assert manifest["preprocessing"]["pixel_mean"] == [123.675, 116.28, 103.53]
    for key in ("encoder", "decoder"):
        spec = manifest["models"][key]
        model = onnx.load(str(stand_in_repo / spec["path"]), load_external_data=False)
        graph_inputs = {i.name: i for i in model.graph.input}
        graph_outputs = {o.name: o for o in model.graph.output}
        config = (stand_in_repo / spec["name"] / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in config
        batched = key == "encoder"
        assert (f"max_batch_size: {spec['max_batch_size']}" if batched else "max_batch_size: 0") in config
        for role, tensor in {**spec["inputs"], **spec["outputs"]}.items():
            node = graph_inputs.get(tensor["name"]) or graph_outputs[tensor["name"]]
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in node.type.tensor_type.shape.dim]
            assert dims == tensor["shape"], f"{key}.{role}"
            config_dims = tensor["shape"][1:] if batched else tensor["shape"]
            assert f'name: "{tensor["name"]}"' in config
            assert f"dims: [ {', '.join(str(d) for d in config_dims)} ]" in config
        import hashlib

        assert spec["sha256"] == hashlib.sha256((stand_in_repo / spec["path"]).read_bytes()).hexdigest()
    enc_config = (stand_in_repo / "sam_encoder" / "config.pbtxt").read_text()
    assert "dynamic_batching" in enc_config and "kind: KIND_CPU" in enc_config


def test_gpu_instance_groups_by_default():
    from export.triton_repo import render_config_pbtxt

    text = render_config_pbtxt("m", [("x", "float32", [3])], [("y", "float32", [3])], max_batch_size=4,
                               max_queue_delay_us=100)
    assert "kind: KIND_GPU" in text and "max_queue_delay_microseconds: 100" in text
    with pytest.raises(ValueError, match="dynamic batching needs max_batch_size > 0"):
        render_config_pbtxt("m", [], [], max_batch_size=0, max_queue_delay_us=100)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "export" / "export_sam.py"), *args],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: ["--model-type", "vit_b", "--checkpoint", str(tmp / "nope.pth")], "does not exist"),
        (lambda tmp: ["--model-type", "vit_b", "--checkpoint", str(tmp / "corrupt.pth")], "not a readable PyTorch checkpoint"),
        (lambda tmp: ["--model-type", "vit_h"], "--checkpoint is required for vit_h"),
        (lambda tmp: ["--model-type", "stand-in", "--out", str(tmp / "file.txt" / "repo")], "is not writable"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, make_args, message):
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    result = _cli(*make_args(tmp_path))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("export_sam: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


@pytest.mark.parametrize("model_type", ["tiny-test", "sam2-tiny-test"])
def test_a_truncated_or_empty_checkpoint_says_so_with_its_size_and_what_to_do(tiny_checkpoint, tmp_path, model_type):
    """A cut download read "(PytorchStreamReader failed ... If you are seeing this error, there is a high)" (cut
    mid-sentence) and an empty file "(EOFError: )": neither said what to do next."""
    whole = tiny_checkpoint.read_bytes()
    (tmp_path / "half.pth").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    next_step = (r"\): it looks truncated or corrupt; download it again and compare its size and sha256 with Meta's "
                 r"release \(or with wherever the file came from\)$")
    for name, found in (("half.pth", (rf"{len(whole) // 2:,} bytes; PytorchStreamReader failed reading zip archive: "
                                      "failed finding central directory")),
                        ("empty.pth", "the file is empty, 0 bytes")):
        with pytest.raises(ExportError, match=rf"^checkpoint {tmp_path / name} is not a readable PyTorch checkpoint "
                                              rf"\({found}{next_step}"):
            load_model(model_type, str(tmp_path / name), random_init=False)
    # A whole safetensors file was called truncated too (torch.load's reason: safetensors not installed)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "sam.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(ExportError, match=rf"^checkpoint {tmp_path / 'sam.safetensors'} is a safetensors file; alps "
                                          r"reads PyTorch checkpoints .* then give the \.pth$"):
        load_model(model_type, str(tmp_path / "sam.safetensors"), random_init=False)


def test_checkpoint_of_another_kind_of_model_says_it_is_not_sam(tmp_path):
    """A detector's or classifier's checkpoint given for SAM shares no key with it: said so, with a few of its keys
    and Meta's file, not as SAM's whole list of missing keys."""
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(3), "head.fc.bias": torch.zeros(2)}},
               tmp_path / "resnet.pth")
    for model_type, meta in (("vit_b", "Meta's sam_vit_b_01ec64.pth or a fine-tune of it"),
                             ("tiny-test", "a checkpoint of tiny-test")):
        with pytest.raises(ExportError, match=rf"^checkpoint {tmp_path / 'resnet.pth'} holds none of {model_type}'s "
                                              r"weights \(its keys begin 'backbone.conv1.weight', 'head.fc.bias'\): "
                                              rf"it is not a SAM checkpoint; give {meta}$"):
            load_model(model_type, str(tmp_path / "resnet.pth"), random_init=False)


def test_checkpoint_of_another_model_type_is_named(tiny_checkpoint, tmp_path):
    """Weights of another SAM size, or of SAM 2.1, say which they are (a cut 'Missing key(s)' line before)."""
    with pytest.raises(ExportError, match=r"does not match --model-type vit_b .*\(Meta's vit_b is sam_vit_b_01ec64"):
        load_model("vit_b", str(tiny_checkpoint), random_init=False)
    weights = torch.load(tiny_checkpoint, weights_only=True)
    for held, extra, given in (("vit_h", {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1280)}, "vit_h"),
                               ("SAM 2.1", {"image_encoder.trunk.pos_embed": torch.zeros(1),
                                            "no_obj_embed_spatial": torch.zeros(1, 64)}, "sam2.1_hiera_t"),
                               ("sam2.1_hiera_l", {"image_encoder.trunk.patch_embed.proj.weight":
                                                   torch.zeros(144, 3, 7, 7), "no_obj_embed_spatial": torch.zeros(1),
                                                   **{f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1)
                                                      for i in range(48)}}, "sam2.1_hiera_l")):
        # Also under a training prefix (a DDP fine-tune: its message was load_state_dict's, every key "missing")
        for saved in ({**weights, **extra}, {"model": {f"module.{k}": v for k, v in {**weights, **extra}.items()}}):
            torch.save(saved, tmp_path / "other.pth")
            with pytest.raises(ExportError, match=rf"holds {held} weights, not vit_b's: give --model-type {given}"):
                load_model("vit_b", str(tmp_path / "other.pth"), random_init=False)
    torch.save({**weights, "image_encoder.trunk.pos_embed": torch.zeros(1)}, tmp_path / "sam2_0.pth")
    with pytest.raises(ExportError, match=r"holds SAM 2 \(the first release, not 2\.1\) weights, not vit_b's: give a "
                                          r"SAM 2\.1 checkpoint \(sam2\.1_hiera_\*\.pt"):
        load_model("vit_b", str(tmp_path / "sam2_0.pth"), random_init=False)


def test_a_fine_tunes_checkpoint_with_sams_layers_loads_wherever_training_code_put_them(tiny_checkpoint, tmp_path):
    """Training scripts save {'model': ..., 'optimizer': ..., 'epoch': ...} (SAM fine-tunes), {'state_dict': ...}
    (Lightning), keys prefixed 'module.' (DistributedDataParallel): the same weights load, and the log says where
    they were; a fine-tune with a layer SAM lacks is refused, naming it."""
    weights = torch.load(tiny_checkpoint, weights_only=True)
    original = load_model("tiny-test", str(tiny_checkpoint), random_init=False).state_dict()
    layouts = {
        "model": ({"model": weights, "optimizer": {"lr": 1e-4}, "epoch": 3}, "the 'model' entry"),
        "state_dict": ({"state_dict": {f"module.{k}": v for k, v in weights.items()}},
                       "the 'state_dict' entry, keys prefixed 'module.'"),
        "prefixed": ({f"model.{k}": v for k, v in weights.items()}, "keys prefixed 'model.'"),
    }
    for name, (data, where) in layouts.items():
        torch.save(data, tmp_path / f"{name}.pth")
        said = []
        loaded = load_model("tiny-test", str(tmp_path / f"{name}.pth"), random_init=False, log=said.append)
        assert said == [f"Weights of tiny-test read from {where} of {tmp_path / f'{name}.pth'}."]
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.items())
    torch.save({"model": {**weights, "image_encoder.blocks.0.adapter.weight": torch.zeros(4),
                          "criterion.pos_weight": torch.ones(1)}, "epoch": 3}, tmp_path / "adapter.pth")
    with pytest.raises(ExportError, match=r"does not match --model-type tiny-test \(Unexpected key\(s\) in state_dict: "
                                          r"\"image_encoder\.blocks\.0\.adapter\.weight\"\.\)"):
        load_model("tiny-test", str(tmp_path / "adapter.pth"), random_init=False)


def test_sams_weights_beside_a_loss_or_head_load_and_the_rest_is_named(tiny_checkpoint, tmp_path):
    """A Lightning module's 'model.' weights beside its loss buffer, or SAM's keys beside an auxiliary head, were
    refused as "does not match --model-type" (every SAM key was there): SAM's weights load, one line names what was
    left out. Missing keys stay refused, and so do two copies of the weights (which one is meant?)."""
    weights = torch.load(tiny_checkpoint, weights_only=True)
    original = load_model("tiny-test", str(tiny_checkpoint), random_init=False).state_dict()
    heads = {f"aux_head.{i}.weight": torch.zeros(2) for i in range(4)}
    layouts = {
        "lightning": ({"state_dict": {**{f"model.{k}": v for k, v in weights.items()},
                                      "criterion.pos_weight": torch.ones(1)}, "epoch": 3},
                      "the 'state_dict' entry, keys prefixed 'model.'",
                      "1 other entry of the file, not tiny-test's, ignored (criterion.pos_weight)"),
        "head": ({**weights, **heads}, "the top level",
                 ("4 other entries of the file, not tiny-test's, ignored (aux_head.0.weight, aux_head.1.weight, "
                  "aux_head.2.weight, ...)")),
    }
    for name, (data, where, ignored) in layouts.items():
        path = tmp_path / f"{name}.pth"
        torch.save(data, path)
        said = []
        loaded = load_model("tiny-test", str(path), random_init=False, log=said.append)
        assert said == [f"Weights of tiny-test read from {where} of {path}; {ignored}."]
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.items())
    del weights["mask_decoder.iou_token.weight"]
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in weights.items()}, "criterion.w": torch.ones(1)}},
               tmp_path / "missing.pth")
    with pytest.raises(ExportError, match=r"does not match --model-type tiny-test \(Missing key\(s\)"):
        load_model("tiny-test", str(tmp_path / "missing.pth"), random_init=False)
    full = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**{f"model.{k}": v for k, v in full.items()}, **{f"ema.{k}": v for k, v in full.items()}},
               tmp_path / "ema.pth")
    with pytest.raises(ExportError, match=r"holds the model's weights 2 times \(keys prefixed 'model.', keys "
                                          r"prefixed 'ema.'\); save the state dict you mean to export alone$"):
        load_model("tiny-test", str(tmp_path / "ema.pth"), random_init=False)
    # Two copies in two entries (a model and its EMA, a wrapper's 'model' beside Lightning's 'state_dict'): the
    # 'model' entry was exported without a word of the other, which is often the one meant.
    for other in ("model_ema", "state_dict"):
        torch.save({"model": full, other: {f"module.{k}": v for k, v in full.items()}, "epoch": 9}, tmp_path / "two.pth")
        with pytest.raises(ExportError, match=rf"holds the model's weights 2 times \(the 'model' entry, the '{other}' "
                                              r"entry\); save the state dict you mean to export alone$"):
            load_model("tiny-test", str(tmp_path / "two.pth"), random_init=False)


def test_a_checkpoint_with_nan_or_infinite_weights_is_refused(tiny_checkpoint, tmp_path):
    """A diverged fine-tune exported with exit 0: parity compared NaN with NaN and passed (NaN is within any
    tolerance), the manifest held NaN (not JSON), and every image's masks were refused as too large for --sigma."""
    weights = torch.load(tiny_checkpoint, weights_only=True)
    name = "mask_decoder.output_upscaling.0.weight"
    for bad in (float("nan"), float("inf")):
        weights[name] = weights[name].clone()
        weights[name][0] = bad
        torch.save({"model": weights}, tmp_path / "diverged.pth")
        with pytest.raises(ExportError, match=rf"diverged.pth holds NaN or infinite weights in 1 tensor\(s\) \(first: "
                                              rf"{name}\): a training run that diverged; export a checkpoint saved "
                                              r"before it did$"):
            load_model("tiny-test", str(tmp_path / "diverged.pth"), random_init=False)


def test_parity_fails_on_nan():
    """The parity check's own guard, for NaN that arises in the graph (fp16 overflow) rather than in the weights."""
    from export.onnx_export import worst_difference

    assert np.isnan(worst_difference(0.0, float("nan"), 1e-7))  # max(0.0, nan) was 0.0: a NaN decoder passed


def test_a_missing_package_is_not_blamed_on_the_checkpoint(tiny_checkpoint, monkeypatch):
    """segment-anything not installed: "checkpoint ... is not a readable PyTorch checkpoint" before."""
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # what an environment without it gives
    with pytest.raises(ExportError, match=r"^segment_anything is not installed, and exporting tiny-test needs it"):
        load_model("tiny-test", str(tiny_checkpoint), random_init=False)
