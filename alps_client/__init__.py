"""alps: ALPS pseudo-labelling with SAM, as a plain library (no Prefect, no torch).

Stages, in the order data flows through them (ARCHITECTURE.md has the one-page map):

- ``alps_client.io`` — find and read the inputs (``discovery``, ``readers``); write shards and the dataset.
- ``alps_client.backends`` — where SAM runs: embedded onnxruntime, Triton, or the numpy fake for tests.
- ``alps_client.amg`` — automatic mask generation (Meta's generator in numpy).
- ``alps_client.labels`` — the gate, pseudo feature labels, k-means and label painting.
- ``alps_client.pipeline`` — one image through masks -> gate -> features -> shard.
"""
