"""What a TFLite file needs in memory, read from the file, and an operator order that needs less.

LiteRT runs a graph's operators in the order the file lists them, and its arena planner
(and XNNPACK's, for the delegated part) gives every intermediate tensor memory from its
producer to its last consumer in that order. onnx2tf lists the operators of a chunked
attention block breadth-first (every chunk's QK^T, then every softmax, then every product
with V), so all chunks' scores are alive at once and chunking saves nothing.
`schedule_depth_first` rewrites the list in place: a depth-first walk back from the
outputs, each op's inputs in order, so every chunk is finished before the next begins. It
only permutes the operator vector of the flatbuffer; tensors, buffers (also those stored
past the flatbuffer) and signatures stay byte for byte.

`graph_memory` reports the largest intermediate tensor and the peak of the bytes alive at
once in operator order: the smallest arena any planner can give that order. Weights
(constant tensors, and DEQUANTIZE outputs of constants, which XNNPACK packs as weights)
are not intermediates.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2, "INT8": 1, "FLOAT64": 8}


@dataclass(frozen=True)
class GraphMemory:
    largest_tensor: str
    largest_tensor_shape: tuple[int, ...]
    largest_tensor_bytes: int
    peak_live_bytes: int  # in operator order, over the first subgraph
    operators: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["largest_tensor_shape"] = list(self.largest_tensor_shape)
        d["largest_tensor_mb"] = round(self.largest_tensor_bytes / 2**20, 3)
        d["peak_live_mb"] = round(self.peak_live_bytes / 2**20, 3)
        return d


def _tfl():
    from mobilegen.exporter.tflite_export import _schema

    return _schema()[1]


@dataclass
class _Graph:
    ops: list[tuple[list[int], list[int], str]]  # (inputs, outputs, kind) in file order
    sizes: list[int]  # bytes of each tensor, 0 for constants
    names: list[str]
    shapes: list[tuple[int, ...]]
    inputs: list[int]
    outputs: list[int]


def _read(raw: bytes, index: int = 0) -> _Graph:
    tfl = _tfl()
    model = tfl.Model.GetRootAs(raw, 0)
    graph = model.Subgraphs(index)
    types = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
    kinds = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]  # fmt: skip
    sizes, names, shapes = [], [], []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        buf = model.Buffers(t.Buffer()) if t.Buffer() else None
        constant = buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        sizes.append(0 if constant else int(np.prod(shape, dtype=np.int64)) * ITEMSIZE.get(types.get(t.Type(), ""), 4))
        names.append(t.Name().decode(errors="replace"))
        shapes.append(shape)
    ops = []
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops.append((ins, outs, kinds.get(codes[op.OpcodeIndex()], "?")))
    for ins, outs, kind in ops:  # dequantized constants are weights
        if kind == "DEQUANTIZE" and ins and sizes[ins[0]] == 0:
            for o in outs:
                sizes[o] = 0
    inputs = [int(i) for i in graph.InputsAsNumpy()] if graph.InputsLength() else []
    outputs = [int(i) for i in graph.OutputsAsNumpy()] if graph.OutputsLength() else []
    return _Graph(ops, sizes, names, shapes, inputs, outputs)


def peak_live_bytes(g: _Graph, order: list[int]) -> int:
    last = {}
    for step, j in enumerate(order):
        for i in g.ops[j][0]:
            if i >= 0:
                last[i] = step
    for i in g.outputs:
        last[i] = len(order)
    live = sum(g.sizes[i] for i in set(g.inputs))
    peak = live
    for step, j in enumerate(order):
        ins, outs, _ = g.ops[j]
        live += sum(g.sizes[o] for o in outs)
        peak = max(peak, live)
        for i in set(ins) | set(outs):
            if i >= 0 and last.get(i, -1) <= step and i not in g.outputs:
                live -= g.sizes[i]
    return peak


def graph_memory(path: Path) -> GraphMemory:
    """Largest intermediate tensor (every subgraph) and peak bytes alive in file order (first subgraph)."""
    raw = path.read_bytes()
    tfl = _tfl()
    count = tfl.Model.GetRootAs(raw, 0).SubgraphsLength()
    graphs = [_read(raw, i) for i in range(count)]
    g0 = graphs[0]
    best = max(((g.sizes[i], g.names[i], g.shapes[i]) for g in graphs for i in range(len(g.sizes))), default=(0, "", ()))
    return GraphMemory(best[1], best[2], best[0], peak_live_bytes(g0, list(range(len(g0.ops)))), len(g0.ops))


def depth_first_order(g: _Graph) -> list[int]:
    """Post-order of a depth-first walk from the graph outputs (inputs visited in order);
    ops that feed no output keep their place at the end."""
    producer = {o: j for j, (_, outs, _) in enumerate(g.ops) for o in outs}
    order, done = [], set()
    for root in g.outputs:
        if root not in producer:
            continue
        stack = [(producer[root], 0)]
        while stack:
            j, k = stack.pop()
            if j in done:
                continue
            ins = g.ops[j][0]
            while k < len(ins) and (ins[k] not in producer or producer[ins[k]] in done):
                k += 1
            if k < len(ins):
                stack += [(j, k + 1), (producer[ins[k]], 0)]
            else:
                done.add(j)
                order.append(j)
    return order + [j for j in range(len(g.ops)) if j not in done]


def schedule_depth_first(path: Path) -> tuple[int, int]:
    """Reorder the first subgraph's operators in place; returns peak live bytes (before, after).
    The order is kept only if it lowers the peak."""
    raw = bytearray(path.read_bytes())
    g = _read(bytes(raw))
    before = peak_live_bytes(g, list(range(len(g.ops))))
    order = depth_first_order(g)
    after = peak_live_bytes(g, order)
    if after >= before:
        return before, before
    tfl = _tfl()
    graph = tfl.Model.GetRootAs(raw, 0).Subgraphs(0)
    tab = graph._tab
    start = tab.Vector(tab.Offset(10))  # the operators vector: uoffsets relative to each slot
    targets = [start + 4 * j + struct.unpack_from("<I", raw, start + 4 * j)[0] for j in range(len(g.ops))]
    for slot, j in enumerate(order):
        struct.pack_into("<I", raw, start + 4 * slot, targets[j] - (start + 4 * slot))
    tmp = path.with_suffix(".reorder.tmp")
    tmp.write_bytes(bytes(raw))
    tmp.replace(path)
    return before, after
