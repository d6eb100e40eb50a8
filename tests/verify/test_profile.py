"""verify/profile.py: a TFLite file cut into operators and blocks that compute what they compute in the
file, grouped by UNet block, with floors from the graph's own shapes."""

from __future__ import annotations

import numpy as np
import pytest

from mobilegen.verify.cuts import EMBED, OTHER, TFLiteGraph, block_floors, block_of
from mobilegen.verify.profile import tflite_values


def test_names_map_to_the_unet_block_they_come_from():
    assert block_of("/unet/sa6/ln/LayerNormalization_output_0") == "sa6"
    assert block_of("/unet/Mul_output_0") == EMBED
    assert block_of("_v_1833") == OTHER and block_of("eps") == OTHER


@pytest.fixture(scope="module")
def graph_and_values(tiny_files):
    path = tiny_files["denoiser_float16.tflite"]
    return TFLiteGraph(path), tflite_values(path, threads=1)


def run_cut(content: bytes, inputs: list[int], values: dict) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    for d, t in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], values[t].reshape(d["shape"]))
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


@pytest.mark.parametrize("kind", ["CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "MEAN"])
def test_one_cut_operator_computes_what_it_computes_in_the_file(graph_and_values, kind):
    g, values = graph_and_values
    j = g.kinds.index(kind)
    content, inputs = g.cut([j])
    (out,) = run_cut(content, inputs, values)
    want = values[int(g.graph.operators[j].outputs[0])]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    if kind in ("CONV_2D", "FULLY_CONNECTED"):
        assert g.macs(j) > 0, "a product's MACs are counted"


def test_a_cut_block_computes_the_blocks_output_and_only_reads_its_boundary(graph_and_values):
    g, values = graph_and_values
    ops = [j for j in range(len(g.kinds)) if g.block(j) == "sa6"]
    inputs, outputs = g.boundary(ops)
    assert len(inputs) == 1, "an attention block reads one activation from outside"
    content, cut_inputs = g.cut(ops)
    got = run_cut(content, cut_inputs, values)
    for out, t in zip(got, outputs):
        np.testing.assert_allclose(out, values[t], rtol=1e-4, atol=1e-5)


def test_every_operator_has_a_block_and_the_blocks_macs_are_the_networks(graph_and_values, tiny):
    from mobilegen.compress import count_macs

    g, _ = graph_and_values
    assert OTHER not in g.blocks, "generated names join a neighbour's block"
    floors = block_floors(g, gflops=100.0, bandwidth_gbs=10.0)
    assert sum(f["gmacs"] for f in floors.values()) == pytest.approx(count_macs(tiny) / 1e9, rel=0.01)
    sa6 = floors["sa6"]
    assert sa6["floor_ms"] == max(sa6["compute_floor_ms"], sa6["bytes_floor_ms"]) > 0
    assert sa6["traffic_mbytes"] > sa6["mbytes"], "the chunked scores are traffic, not the block's boundary"


def test_weights_stored_past_the_flatbuffer_are_cut_with_their_bytes(tiny_files):
    """ai-edge-quantizer's files keep large buffers at offset/size past the flatbuffer (the real v2's
    int8 files do): the tiny file's conv weights moved there must give the same cut."""
    path = tiny_files["denoiser_float32.tflite"]
    g, values = TFLiteGraph(path), tflite_values(path, threads=1)
    j = g.kinds.index("CONV_2D")
    weights = g.model.buffers[g.graph.tensors[g.graph.operators[j].inputs[1]].buffer]
    data = bytes(weights.data)
    weights.data, weights.offset, weights.size = None, len(g.raw), len(data)
    g.raw += data
    (out,) = run_cut(*g.cut([j]), values)
    np.testing.assert_allclose(out, values[int(g.graph.operators[j].outputs[0])], rtol=1e-5, atol=1e-6)
