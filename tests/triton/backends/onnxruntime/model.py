"""A Triton Python backend *named* ``onnxruntime``: serves ONNX models with onnxruntime.

The ``tritonserver`` bundled with nvidia-pytriton (our CPU test server) has the Python backend only. Placed
at ``<backend-dir>/onnxruntime/model.py``, this file makes the exporter's unchanged ``config.pbtxt`` files
(``platform: "onnxruntime_onnx"``) load and serve, so tests exercise the real server, protocol and configs.
Requests of a dynamic batch are concatenated along the batch dimension and run in one session call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ALPS_TRITON_ORT_THREADS", "1"))
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]
        self.batched = int(self.config.get("max_batch_size", 0)) > 0
        self.batch_sizes = []  # executions' batch sizes, for tests of dynamic batching

    def execute(self, requests):
        # Inputs marked optional in config.pbtxt may be absent: onnxruntime then uses the model's default.
        feeds_per_request = [
            {name: t.as_numpy() for name in self.inputs if (t := pb_utils.get_input_tensor_by_name(r, name)) is not None}
            for r in requests
        ]
        if self.batched and len(requests) > 1:
            sizes = [len(f[self.inputs[0]]) for f in feeds_per_request]
            feeds = {n: np.concatenate([f[n] for f in feeds_per_request]) for n in self.inputs}
            results = self.session.run(self.outputs, feeds)
            bounds = np.cumsum([0, *sizes])
            per_request = [[r[bounds[i] : bounds[i + 1]] for r in results] for i in range(len(requests))]
        else:
            per_request = [self.session.run(self.outputs, f) for f in feeds_per_request]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, out)])
            for out in per_request
        ]

    def finalize(self):
        self.session = None
