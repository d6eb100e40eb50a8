"""Reading TFLite files: the flatbuffer schema, operator and tensor types, and what a
graph needs in memory (the largest intermediate tensor, and the peak of the bytes alive
at once in operator order: the smallest arena any planner can give that order). Weights
(constant tensors, and DEQUANTIZE outputs of constants, which XNNPACK packs as weights)
are not intermediates. Writers live in export/ (tflite.py, schedule.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilegen.errors import ExportError, MissingDependencyError


def schema():
    """The flatbuffers module and the TFLite schema's generated classes (onnx2tf ships them)."""
    try:
        import flatbuffers
        from onnx2tf.tflite_builder.schema import schema_generated as tfl
    except ImportError:
        raise MissingDependencyError("onnx2tf", "TFLite conversion") from None
    return flatbuffers, tfl


def tensor_name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def op_kinds(model, tfl) -> list[str]:
    """Builtin operator name of each op of the first subgraph (object API ModelT)."""
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [names.get(codes[op.opcodeIndex], str(codes[op.opcodeIndex])) for op in model.subgraphs[0].operators]


def tflite_op_types(path: Path) -> list[str]:
    """Operator type names of a TFLite file; custom ops as CUSTOM:<name> (Flex ops are custom)."""
    _, tfl = schema()
    model = tfl.Model.GetRootAs(path.read_bytes(), 0)
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tfl.BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{(code.CustomCode() or b'?').decode()}")
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops)


def check_builtin_only(path: Path) -> list[str]:
    ops = tflite_op_types(path)
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise ExportError(f"{path.name} uses non-builtin ops {', '.join(custom)}; only TFLite builtin ops are allowed")
    return ops


def tflite_tensor_types(path: Path) -> dict[str, int]:
    """Count of tensors per type name, to show where weights are float16."""
    _, tfl = schema()
    names = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
    model = tfl.Model.GetRootAs(path.read_bytes(), 0)
    counts: dict[str, int] = {}
    graph = model.Subgraphs(0)
    for i in range(graph.TensorsLength()):
        name = names.get(graph.Tensors(i).Type(), "?")
        counts[name] = counts.get(name, 0) + 1
    return counts


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


@dataclass
class OpGraph:
    ops: list[tuple[list[int], list[int], str]]  # (inputs, outputs, kind) in file order
    sizes: list[int]  # bytes of each tensor, 0 for constants
    names: list[str]
    shapes: list[tuple[int, ...]]
    inputs: list[int]
    outputs: list[int]


def read_graph(raw: bytes, index: int = 0) -> OpGraph:
    tfl = schema()[1]
    model = tfl.Model.GetRootAs(raw, 0)
    graph = model.Subgraphs(index)
    types = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
    kinds = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    codes = [
        max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
        for i in range(model.OperatorCodesLength())
    ]
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
    return OpGraph(ops, sizes, names, shapes, inputs, outputs)


def peak_live_bytes(g: OpGraph, order: list[int]) -> int:
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
    tfl = schema()[1]
    count = tfl.Model.GetRootAs(raw, 0).SubgraphsLength()
    graphs = [read_graph(raw, i) for i in range(count)]
    g0 = graphs[0]
    best = max(((g.sizes[i], g.names[i], g.shapes[i]) for g in graphs for i in range(len(g.sizes))), default=(0, "", ()))
    return GraphMemory(best[1], best[2], best[0], peak_live_bytes(g0, list(range(len(g0.ops)))), len(g0.ops))
