"""The operator order of the exported graphs: depth first, so no tensor outlives its chunk."""

from __future__ import annotations

import pytest

from mobilegen.contract.defaults import TENSOR_MB as DEFAULT_TENSOR_MB
from mobilegen.export.schedule import depth_first_order
from mobilegen.models.budget import MB
from mobilegen.runtime.tflite_file import graph_memory, peak_live_bytes, read_graph


@pytest.mark.slow  # the v2's attention is what gets chunked
def test_every_tflite_graph_stays_within_the_tensor_budget(default_export):
    """Read from the flatbuffers: no tensor above the budget, and the operator order reuses the chunks."""
    out, _ = default_export
    for path in sorted(out.glob("*.tflite")):
        mem = graph_memory(path)
        assert mem.largest_tensor_bytes <= DEFAULT_TENSOR_MB * MB, (path.name, mem)
        # Breadth-first (onnx2tf's order) keeps every sa6 chunk's scores alive: 260 MB and more.
        assert mem.peak_live_bytes < 24 * MB, (path.name, mem)
        g = read_graph(path.read_bytes())
        assert peak_live_bytes(g, depth_first_order(g)) == mem.peak_live_bytes, "the file is already in that order"
