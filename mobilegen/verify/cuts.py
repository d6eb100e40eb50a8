"""A TFLite file cut into pieces that run alone: one operator, or one UNet block, with its weights
and the values the whole graph feeds it (verify/profile.py times them). Blocks come from the module
path in tensor names (`/unet/<block>/...`, from the ONNX export both files share); onnx2tf's
generated names join a neighbour's block. Floors and MACs are read from the graph's own shapes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from mobilegen.runtime.tflite_file import ITEMSIZE, op_kinds, schema

OTHER = "(other)"
EMBED = "embed"  # ops of UNet.forward itself: the time encoding and the label embedding


def block_of(name: str) -> str:
    """The UNet block a tensor or node name belongs to: `/unet/sa6/...` -> sa6."""
    parts = [p for p in name.split("/") if p]
    if "unet" not in parts[:-1]:
        return OTHER
    at = parts.index("unet") + 1
    return parts[at] if at < len(parts) - 1 else EMBED


class TFLiteGraph:
    """A TFLite file's first subgraph, read once; cuts models of any subset of its operators."""

    def __init__(self, path: Path):
        self.fb, self.tfl = schema()
        self.raw = path.read_bytes()
        self.model = self.tfl.ModelT.InitFromPackedBuf(self.raw, 0)
        self.graph = self.model.subgraphs[0]
        self.kinds = op_kinds(self.model, self.tfl)
        self.types = {v: k for k, v in vars(self.tfl.TensorType).items() if not k.startswith("_")}
        self.producer = {t: j for j, op in enumerate(self.graph.operators) for t in op.outputs}
        self.graph_inputs = {int(t) for t in self.graph.inputs}
        self.consumers: dict[int, set[int]] = defaultdict(set)
        for j, op in enumerate(self.graph.operators):
            for t in op.inputs:
                self.consumers[int(t)].add(j)
        self.blocks = self._blocks()
        # DEQUANTIZE of a constant (a float16 file's weights): XNNPACK packs it as a weight of its consumer
        self.weight_ops = {
            j for j, kind in enumerate(self.kinds) if kind == "DEQUANTIZE" and self.stored(int(self.graph.operators[j].inputs[0]))
        }

    def _blocks(self) -> list[str]:
        """Each operator's block by its output's name; an operator whose name is generated (onnx2tf's
        `_v_123`, the output `eps`) joins the block of the operator reading its output, else of its input's producer."""
        blocks = []
        for op in self.graph.operators:
            name = self.graph.tensors[op.outputs[0]].name
            blocks.append(block_of(name.decode() if isinstance(name, bytes) else str(name)))
        for _ in range(len(blocks)):
            changed = False
            for j, op in enumerate(self.graph.operators):
                if blocks[j] != OTHER:
                    continue
                near = [k for t in op.outputs for k in sorted(self.consumers[int(t)])]
                near += [self.producer[int(t)] for t in op.inputs if int(t) in self.producer]
                named = [blocks[k] for k in near if blocks[k] != OTHER]
                if named:
                    blocks[j], changed = named[0], True
            if not changed:
                return blocks
        return blocks

    def buffer_data(self, index: int):
        """A buffer's bytes, inline or (ai-edge-quantizer's files) stored past the flatbuffer at offset/size."""
        buffer = self.model.buffers[index]
        if buffer.data is not None and len(buffer.data) > 0:
            return buffer.data
        if getattr(buffer, "offset", 0) > 1 and getattr(buffer, "size", 0) > 0:
            return np.frombuffer(self.raw, np.uint8, buffer.size, buffer.offset)
        return None

    def stored(self, t: int) -> bool:
        """A tensor whose value is in the file (or that nothing computes)."""
        return self.buffer_data(self.graph.tensors[t].buffer) is not None or (
            t not in self.producer and t not in self.graph_inputs
        )

    def is_constant(self, t: int) -> bool:
        return self.stored(t) or self.producer.get(t) in self.weight_ops

    def shape(self, t: int) -> list[int]:
        return [int(d) for d in self.graph.tensors[t].shape]

    def nbytes(self, t: int) -> int:
        tensor = self.graph.tensors[t]
        return int(np.prod(self.shape(t), dtype=np.int64)) * ITEMSIZE.get(self.types.get(tensor.type, ""), 4)

    def block(self, j: int) -> str:
        return self.blocks[j]

    def macs(self, j: int) -> int:
        """Multiply-accumulates of one operator from its tensor shapes (0 for ops without a product)."""
        op, kind = self.graph.operators[j], self.kinds[j]
        out = int(np.prod(self.shape(op.outputs[0]), dtype=np.int64))
        if kind == "CONV_2D":
            _, kh, kw, cin = self.shape(op.inputs[1])
            return out * kh * kw * cin
        if kind == "DEPTHWISE_CONV_2D":
            return out * self.shape(op.inputs[1])[1] * self.shape(op.inputs[1])[2]
        if kind == "FULLY_CONNECTED":
            return out * self.shape(op.inputs[1])[-1]
        if kind == "BATCH_MATMUL":
            lhs, adj_x = self.shape(op.inputs[0]), bool(getattr(op.builtinOptions, "adjX", False))
            return out * (lhs[-2] if adj_x else lhs[-1])
        return 0

    def activation_bytes(self, j: int) -> int:
        op = self.graph.operators[j]
        return sum(self.nbytes(t) for t in list(op.inputs) + list(op.outputs) if t >= 0 and not self.is_constant(t))

    def boundary(self, ops: list[int]) -> tuple[list[int], list[int]]:
        """The inputs a subset of operators reads from outside it, and the outputs read outside it."""
        inside = set(ops)
        produced = {t for j in ops for t in self.graph.operators[j].outputs}
        graph_outputs = set(int(t) for t in self.graph.outputs)
        inputs, outputs = [], []
        for j in ops:
            if j in self.weight_ops:  # a weight's DEQUANTIZE: constant in, read only by its consumer
                continue
            for t in self.graph.operators[j].inputs:
                t = int(t)
                if t >= 0 and t not in produced and not self.is_constant(t) and t not in inputs:
                    inputs.append(t)
            for t in self.graph.operators[j].outputs:
                t = int(t)
                if t in graph_outputs or self.consumers[t] - inside or not self.consumers[t]:
                    outputs.append(t)
        return inputs, outputs

    def cut(self, ops: list[int]) -> tuple[bytes, list[int]]:
        """A model of these operators (file order); returns its bytes and its inputs (original tensor ids)."""
        tfl, src = self.tfl, self.graph
        weights = {
            self.producer[int(t)] for j in ops for t in src.operators[j].inputs if self.producer.get(int(t)) in self.weight_ops
        }
        ops = sorted(set(ops) | weights)
        inputs, outputs = self.boundary(ops)
        used = sorted({int(t) for j in ops for t in list(src.operators[j].inputs) + list(src.operators[j].outputs) if t >= 0})
        remap = {t: i for i, t in enumerate(used)}
        model, graph = tfl.ModelT(), tfl.SubGraphT()
        model.version, model.operatorCodes, model.description = self.model.version, self.model.operatorCodes, b"profile cut"
        model.buffers = [tfl.BufferT()]
        graph.tensors = []
        for t in used:
            tensor = _copy(src.tensors[t])
            data = self.buffer_data(tensor.buffer)
            if data is not None and len(data) > 0:
                buffer = tfl.BufferT()
                buffer.data = data
                model.buffers.append(buffer)
                tensor.buffer = len(model.buffers) - 1
            else:
                tensor.buffer = 0
            graph.tensors.append(tensor)
        graph.operators = []
        for j in ops:
            op = _copy(src.operators[j])
            op.inputs = [remap[int(t)] if t >= 0 else -1 for t in op.inputs]
            op.outputs = [remap[int(t)] for t in op.outputs]
            graph.operators.append(op)
        graph.inputs = [remap[t] for t in inputs]
        graph.outputs = [remap[t] for t in outputs]
        model.subgraphs = [graph]
        builder = self.fb.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output()), inputs


def _copy(obj):
    """A shallow copy of an object-API table (TensorT, OperatorT): its fields are rebound, never mutated."""
    out = type(obj)()
    vars(out).update(vars(obj))
    return out


def block_floors(g: TFLiteGraph, gflops: float, bandwidth_gbs: float) -> dict[str, dict]:
    """Per block: MACs, the bytes any lowering must move (its inputs, outputs and weights), and the bytes
    this lowering's operators read and write (traffic); floor = max(MACs at the SGEMM peak, bytes at the bandwidth)."""
    members: dict[str, list[int]] = defaultdict(list)
    for j in range(len(g.kinds)):
        members[g.block(j)].append(j)
    floors = {}
    for name, ops in members.items():
        inputs, outputs = g.boundary(ops)
        weights = {int(t) for j in ops for t in g.graph.operators[j].inputs if t >= 0 and g.is_constant(int(t))}
        gmacs = sum(g.macs(j) for j in ops) / 1e9
        mbytes = sum(g.nbytes(t) for t in [*inputs, *outputs, *weights]) / 1e6
        compute_ms, bytes_ms = 2 * gmacs / gflops * 1e3, mbytes / bandwidth_gbs
        floors[name] = {
            "gmacs": gmacs,
            "mbytes": mbytes,
            "traffic_mbytes": sum(g.activation_bytes(j) for j in ops) / 1e6,
            "compute_floor_ms": compute_ms,
            "bytes_floor_ms": bytes_ms,
            "floor_ms": max(compute_ms, bytes_ms),
            "bound": "compute" if compute_ms >= bytes_ms else "memory",
        }
    return floors
