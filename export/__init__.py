"""Export SAM (or the structured stand-in) to ONNX and write a Triton model repository."""
