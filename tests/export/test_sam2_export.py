"""SAM 2.1 exporter: the real checkpoint path on a tiny Hiera, manifest/config contents, clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.errors import ExportError
from export.export_sam import load_model, main, run_export
from export.sam2_models import SAM2_TINY_TEST, _import_build_sam2, build_sam2_architecture
from export.tv_shim import install_torchvision_shim
from tests.shapes import make_shapes_scene

install_torchvision_shim()
from sam2.sam2_image_predictor import SAM2ImagePredictor


@pytest.fixture(scope="module")
def tiny_sam2_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM 2.1 (width-16 Hiera) with seeded random weights, saved as Meta's checkpoints are."""
    torch.manual_seed(321)
    model = build_sam2_architecture(SAM2_TINY_TEST)
    for p in model.parameters():  # Meta's init leaves some embeddings at zero: make every weight matter
        p.data.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_tiny_test.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tiny_sam2_repo(tiny_sam2_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_sam2_repo")
    run_export(SAM2_TINY_TEST, out, checkpoint=str(tiny_sam2_checkpoint), cpu=True, log=lambda *_: None)
    return out


def test_tiny_sam2_checkpoint_exports_with_parity(tiny_sam2_repo, tiny_sam2_checkpoint):
    manifest = json.loads((tiny_sam2_repo / "manifest.json").read_text())
    assert manifest["model_family"] == "sam2" and manifest["model_type"] == SAM2_TINY_TEST
    assert not manifest["is_stand_in"] and not manifest["random_init"]
    assert manifest["note"] == "tiny TEST configuration of SAM 2.1 (tests only), not a released SAM 2.1"  # "SAM 2.1"
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(tiny_sam2_checkpoint.read_bytes()).hexdigest()
    parity = manifest["parity"]
    assert parity["encoder_max_rel_diff"] <= 1e-3
    for name in ("image_embeddings", "high_res_feats_0", "high_res_feats_1"):
        assert 0.0 < parity[f"encoder_{name}_max_rel_diff"] <= 1e-3
    # onnxruntime's antialiased Resize vs PyTorch's kernel: measured, and far below one grey level (1/255/0.229).
    assert 0.0 <= parity["preprocess_max_abs_diff"] <= 1e-3
    assert parity["decoder_masks_max_abs_diff"] <= 1e-4 and parity["decoder_iou_max_abs_diff"] <= 1e-4
    tokens = manifest["models"]["decoder"]["mask_tokens"]
    assert tokens["tokens"] == 4 and tokens["multimask"] == [1, 2, 3] and tokens["dynamic_multimask_via_stability"]
    assert manifest["preprocessing"]["pixel_mean"] == [0.485, 0.456, 0.406]
    assert manifest["versions"]["sam2"] == "1.1.0"


def test_encoder_matches_meta_predictor_on_another_image(tiny_sam2_repo, tiny_sam2_checkpoint):
    """uint8 image of any size in; the three feature maps of SAM2ImagePredictor.set_image out; batch of 2."""
    import onnxruntime as ort

    manifest = json.loads((tiny_sam2_repo / "manifest.json").read_text())
    session = ort.InferenceSession(str(tiny_sam2_repo / manifest["models"]["encoder"]["path"]),
                                   providers=["CPUExecutionProvider"])
    model = load_model(SAM2_TINY_TEST, str(tiny_sam2_checkpoint), random_init=False)
    predictor = SAM2ImagePredictor(model)
    image, _ = make_shapes_scene(seed=2, size=(150, 230))
    ours = session.run(None, {"images": np.stack([image, image[::-1].copy()])})
    predictor.set_image(image)
    theirs = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
    names = [o.name for o in session.get_outputs()]
    assert names == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    for ours_map, their_map in zip(ours, theirs):
        their_map = their_map.numpy()[0]
        assert ours_map.shape[0] == 2
        assert np.abs(ours_map[0] - their_map).max() <= 1e-3 * np.abs(their_map).max()
        assert np.abs(ours_map[1] - their_map).max() > 1e-3 * np.abs(their_map).max()  # the flipped image differs


def test_manifest_and_configs_match_onnx_files(tiny_sam2_repo):
    manifest = json.loads((tiny_sam2_repo / "manifest.json").read_text())
    for key in ("encoder", "decoder"):
        spec = manifest["models"][key]
        model = onnx.load(str(tiny_sam2_repo / spec["path"]), load_external_data=False)
        graph = {t.name: t for t in [*model.graph.input, *model.graph.output]}
        config = (tiny_sam2_repo / spec["name"] / "config.pbtxt").read_text()
        batched = key == "encoder"
        assert (f"max_batch_size: {spec['max_batch_size']}" if batched else "max_batch_size: 0") in config
        assert "kind: KIND_CPU" in config and "SAM 2.1" in config
        for role, tensor in {**spec["inputs"], **spec["outputs"]}.items():
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph[tensor["name"]].type.tensor_type.shape.dim]
            assert dims == tensor["shape"], f"{key}.{role}"
            config_dims = tensor["shape"][1:] if batched else tensor["shape"]
            assert f"dims: [ {', '.join(str(d) for d in config_dims)} ]" in config
        assert spec["sha256"] == hashlib.sha256((tiny_sam2_repo / spec["path"]).read_bytes()).hexdigest()
    assert manifest["models"]["encoder"]["inputs"]["images"]["shape"] == [-1, -1, -1, 3]
    assert set(manifest["models"]["decoder"]["inputs"]) == {
        "image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input",
        "has_mask_input",
    }


def test_sam1_manifest_records_its_family(stand_in_repo):
    assert json.loads((stand_in_repo / "manifest.json").read_text())["model_family"] == "sam"


def test_sam2_stand_in_repository(sam2_stand_in_repo):
    manifest = json.loads((sam2_stand_in_repo / "manifest.json").read_text())
    assert manifest["model_family"] == "sam2" and manifest["is_stand_in"] and "not SAM 2" in manifest["note"]
    assert manifest["checkpoint"] is None


class _Pickled:
    """Not a tensor: torch.load(weights_only=True) must refuse to unpickle it."""


@pytest.mark.parametrize(
    ("make_checkpoint", "message"),
    [
        (lambda p: torch.save({"weights": {}}, p), "has no 'model' state dict"),
        (lambda p: torch.save({"model": {"x": torch.zeros(1)}}, p),
         r"holds none of sam2-tiny-test's weights \(its keys begin 'x'\): it is not a SAM 2.1 checkpoint"),
        (lambda p: torch.save({"model": _Pickled()}, p), "holds more than tensors"),
        (lambda p: p.write_bytes(b"\x00garbage" * 100), "not a readable PyTorch checkpoint"),
    ],
)
def test_bad_checkpoints_are_named(tmp_path, make_checkpoint, message):
    path = tmp_path / "bad.pt"
    make_checkpoint(path)
    with pytest.raises(ExportError, match=message):
        load_model(SAM2_TINY_TEST, str(path), random_init=False)


def test_a_sam2_checkpoint_that_does_not_fit_is_named_in_whole_words_and_nan_is_refused(tiny_sam2_checkpoint, tmp_path):
    """The list of keys was cut mid-name at 160 characters, the hint read "(? is sam2-tiny-test)"; NaN weights
    exported, and parity printed a NaN decoder as "max abs 0.0e+00" (``max(0.0, nan)``)."""
    weights = torch.load(tiny_sam2_checkpoint, weights_only=True)["model"]
    torch.save({"model": {k: v for k, v in weights.items() if not k.startswith("image_encoder.")}}, tmp_path / "a.pt")
    with pytest.raises(ExportError) as refused:
        load_model(SAM2_TINY_TEST, str(tmp_path / "a.pt"), random_init=False)
    message = str(refused.value)
    keys = message.split("(", 1)[1].split("); check", 1)[0]
    assert keys.endswith('", ...') and "?" not in message and message.endswith("belong together")
    name = next(k for k, v in weights.items() if k.startswith("sam_mask_decoder.") and v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    torch.save({"model": weights}, tmp_path / "nan.pt")
    with pytest.raises(ExportError, match=rf"holds NaN or infinite weights in 1 tensor\(s\) \(first: {name}\)"):
        load_model(SAM2_TINY_TEST, str(tmp_path / "nan.pt"), random_init=False)


def test_a_sam2_fine_tunes_checkpoint_loads_wherever_training_code_put_them(tiny_sam2_checkpoint, tmp_path):
    """SAM 2.1 fine-tunes saved by DistributedDataParallel ('module.' keys), PyTorch Lightning ('state_dict',
    'model.' keys) or as a bare state dict load as Meta's {'model': ...} does, and the log says where the weights
    were, and which other entries (a loss's, a head's) were left out; they were refused with "does not match" (or
    "has no 'model' state dict")."""
    weights = torch.load(tiny_sam2_checkpoint, weights_only=True)["model"]
    said: list[str] = []
    original = load_model(SAM2_TINY_TEST, str(tiny_sam2_checkpoint), random_init=False, log=said.append).state_dict()
    assert said == []  # Meta's own layout: nothing to say
    layouts = {
        "ddp": ({"model": {f"module.{k}": v for k, v in weights.items()}, "optimizer": {"lr": 1e-4}, "epoch": 3},
                "the 'model' entry, keys prefixed 'module.'"),
        "lightning": ({"state_dict": {f"model.{k}": v for k, v in weights.items()}, "epoch": 3},
                      "the 'state_dict' entry, keys prefixed 'model.'"),
        "bare": (weights, "the file's top level (a bare state dict)"),
        # Lightning: the model's weights beside a loss's buffer (refused as "does not match" before)
        "lightning_loss": ({"state_dict": {**{f"model.{k}": v for k, v in weights.items()},
                                           "criterion.pos_weight": torch.ones(1)}, "epoch": 3},
                           ("the 'state_dict' entry, keys prefixed 'model.'; 1 other entry of the file, not "
                            f"{SAM2_TINY_TEST}'s, ignored (criterion.pos_weight)")),
        # Meta's layout plus an auxiliary head: the one line names it
        "head": ({"model": {**weights, "aux_head.weight": torch.ones(1)}},
                 f"the 'model' entry; 1 other entry of the file, not {SAM2_TINY_TEST}'s, ignored (aux_head.weight)"),
    }
    for name, (data, where) in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(data, path)
        said.clear()
        loaded = load_model(SAM2_TINY_TEST, str(path), random_init=False, log=said.append).state_dict()
        where, _, ignored = where.partition("; ")
        assert said == [f"Weights of {SAM2_TINY_TEST} read from {where} of {path}" + (f"; {ignored}." if ignored else ".")]
        assert set(loaded) == set(original) and all(torch.equal(loaded[k], v) for k, v in original.items())


def test_a_checkpoint_of_sam_or_of_another_sam2_size_or_release_is_named(tiny_sam2_checkpoint, tmp_path):
    """Meta's file names differ by a letter (sam2_hiera_large.pt is SAM 2, sam2.1_hiera_large.pt SAM 2.1): the
    refusal names what the file holds and what to give, not the first of hundreds of missing keys."""
    build_sam2 = _import_build_sam2()
    sam2_0 = build_sam2("configs/sam2/sam2_hiera_t.yaml", ckpt_path=None, device="cpu")  # SAM 2's first release
    torch.save({"model": sam2_0.state_dict()}, tmp_path / "sam2_hiera_tiny.pt")
    with pytest.raises(ExportError, match=r"holds SAM 2 \(the first release, not 2\.1\) weights, not SAM 2\.1's: give "
                                          r"a SAM 2\.1 checkpoint \(sam2\.1_hiera_\*\.pt from Meta's SAM 2\.1 release\)"):
        load_model(SAM2_TINY_TEST, str(tmp_path / "sam2_hiera_tiny.pt"), random_init=False)
    large = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(144, 3, 7, 7),
             "no_obj_embed_spatial": torch.zeros(1, 64),
             **{f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(144) for i in range(48)}}
    torch.save({"model": large}, tmp_path / "large.pt")
    with pytest.raises(ExportError, match=rf"holds sam2.1_hiera_l weights, not {SAM2_TINY_TEST}'s: give "
                                          r"--model-type sam2.1_hiera_l$"):
        load_model(SAM2_TINY_TEST, str(tmp_path / "large.pt"), random_init=False)
    vit_b = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768), "mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    for saved in (vit_b, {"model": {f"module.{k}": v for k, v in vit_b.items()}}):  # also a DDP fine-tune's
        torch.save(saved, tmp_path / "sam_vit_b.pth")
        with pytest.raises(ExportError, match=r"holds vit_b weights, not SAM 2\.1's: give --model-type vit_b$"):
            load_model(SAM2_TINY_TEST, str(tmp_path / "sam_vit_b.pth"), random_init=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-type", "sam2.1_hiera_t"], "--checkpoint is required for sam2.1_hiera_t (e.g. sam2.1_hiera_tiny.pt"),
        (["--model-type", "sam2.1_hiera_s", "--checkpoint", "x.pt", "--random-init"], "not both"),
        (["--model-type", "sam2-stand-in", "--quantize", "int8"], "--quantize int8 is implemented for SAM (vit_*) only"),
        (["--model-type", "sam2-stand-in", "--random-init"], "the SAM 2 stand-in has no weights"),
        (["--model-type", "sam2.1_hiera_t", "--checkpoint", "no_such_file.pt"], "no_such_file.pt"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "repo")]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("export_sam: error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "repo").exists()  # a refused SAM 2.1 export left an empty --out folder


@pytest.mark.slow
def test_hiera_t_random_init_exports(tmp_path):
    """The real Hiera-T (SAM 2.1 tiny) architecture, random weights: shapes, parity, manifest flag."""
    manifest = run_export("sam2.1_hiera_t", tmp_path, random_init=True, cpu=True, log=lambda *_: None)
    assert manifest["random_init"] and "RANDOM" in manifest["note"]
    assert manifest["parity"]["encoder_max_rel_diff"] <= 1e-3
