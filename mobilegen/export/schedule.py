"""An operator order for a TFLite file that needs less memory.

LiteRT runs a graph's operators in the order the file lists them, and its arena planner
(and XNNPACK's, for the delegated part) gives every intermediate tensor memory from its
producer to its last consumer in that order. onnx2tf lists the operators of a chunked
attention block breadth-first (every chunk's QK^T, then every softmax, then every product
with V), so all chunks' scores are alive at once and chunking saves nothing.
`schedule_depth_first` rewrites the list in place: a depth-first walk back from the
outputs, each op's inputs in order, so every chunk is finished before the next begins. It
only permutes the operator vector of the flatbuffer; tensors, buffers (also those stored
past the flatbuffer) and signatures stay byte for byte.

What an order needs (`peak_live_bytes`, `graph_memory`) is read by runtime/tflite_file.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

from mobilegen.runtime.tflite_file import OpGraph, peak_live_bytes, read_graph


def depth_first_order(g: OpGraph) -> list[int]:
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


def table_field(raw: bytes, table: int, field: int) -> int:
    """Where the offset-typed field `field` of the flatbuffer table at `table` points to (0: absent)."""
    vtable = table - struct.unpack_from("<i", raw, table)[0]
    vtable_size = struct.unpack_from("<H", raw, vtable)[0]
    slot = 4 + 2 * field
    at = struct.unpack_from("<H", raw, vtable + slot)[0] if slot < vtable_size else 0
    return table + at + struct.unpack_from("<I", raw, table + at)[0] if at else 0


def operators_vector(raw: bytes) -> int:
    """Position of the first element of subgraph 0's operators vector (the schema's Model.subgraphs
    is field 2, SubGraph.operators field 3); each element is a uoffset relative to its own slot."""
    model = struct.unpack_from("<I", raw, 0)[0]
    subgraphs = table_field(raw, model, 2)
    first = subgraphs + 4 + struct.unpack_from("<I", raw, subgraphs + 4)[0]
    return table_field(raw, first, 3) + 4


def schedule_depth_first(path: Path) -> tuple[int, int]:
    """Reorder the first subgraph's operators in place; returns peak live bytes (before, after).
    The order is kept only if it lowers the peak."""
    raw = bytearray(path.read_bytes())
    g = read_graph(bytes(raw))
    before = peak_live_bytes(g, list(range(len(g.ops))))
    order = depth_first_order(g)
    after = peak_live_bytes(g, order)
    if after >= before:
        return before, before
    start = operators_vector(raw)
    targets = [start + 4 * j + struct.unpack_from("<I", raw, start + 4 * j)[0] for j in range(len(g.ops))]
    for slot, j in enumerate(order):
        struct.pack_into("<I", raw, start + 4 * slot, targets[j] - (start + 4 * slot))
    tmp = path.with_suffix(".reorder.tmp")
    tmp.write_bytes(bytes(raw))
    tmp.replace(path)
    return before, after
