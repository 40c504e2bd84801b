"""fp16 conversion of a model past protobuf's 2 GB limit (vit_h's fp32 encoder is 2.5 GB). Slow: writes 2.7 GB."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.quantize import half_repository

pytestmark = pytest.mark.slow


def test_a_model_over_two_gigabytes_converts_to_fp16(tmp_path):
    """onnxruntime's converter ran onnx's in-memory shape inference, which serialises the whole model: past 2 GB,
    ``EncodeError: Failed to serialize proto`` (seen on vit_h on a GPU machine)."""
    side = 15_000  # three (15000, 15000) float32 weights: 2.7 GB, over protobuf's 2 GB (each under it)
    identity = numpy_helper.from_array(np.eye(side, dtype=np.float32), "w0")
    weights = [identity] + [onnx.TensorProto() for _ in range(2)]
    for i, w in enumerate(weights[1:], 1):
        w.CopyFrom(identity)
        w.name = f"w{i}"
    # the intermediate tensors have no declared type: the converter needs them inferred to place its casts
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"r{i - 1}", f"w{i}"], [f"h{i}"]) for i in range(3)]
    nodes += [helper.make_node("Relu", [f"h{i}"], ["y" if i == 2 else f"r{i}"]) for i in range(3)]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])], weights)
    source = tmp_path / "repo-fp32"
    (source / "big" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(source / "big" / "1" / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    del identity, weights, graph
    (source / "manifest.json").write_text(json.dumps({"precision": "fp32", "models": {"encoder": {
        "path": "big/1/model.onnx"}}}))

    manifest = half_repository(source, tmp_path / "repo-fp16")

    assert manifest["precision"] == "fp16"
    half = tmp_path / "repo-fp16" / "big" / "1" / "model.onnx"
    model = onnx.load(str(half), load_external_data=False)
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    del model
    import onnxruntime as ort

    x = (np.arange(side, dtype=np.float32) / side)[None]
    (y,) = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.dtype == np.float32 and y.shape == (1, side)
    np.testing.assert_allclose(y, x, atol=1e-3)  # three identities, through fp16
