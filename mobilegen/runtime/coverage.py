"""Op coverage per file and path, like Qualcomm AI Hub's per-compute-unit layer counts.

- GPU: the ops LiteRT's GPU accelerator takes and those it leaves to the CPU, with its reason.
  LiteRT logs them when it compiles the graph, exactly as on a device:
      ERROR: Following operations are not supported by GPU delegate:
      GATHER: Input / output dtype mismatch.
      682 operations will run on the GPU, and the remaining 154 operations will run on the CPU.
- XNNPACK: the ops the classic Interpreter's default delegate takes on x86 and on ARM64, and
  those it leaves to LiteRT's builtin kernels.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from mobilegen.runtime import litert_worker
from mobilegen.runtime.targets import TARGETS, opened

GPU_HEADER = "Following operations are not supported by GPU delegate"
GPU_SPLIT = re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+) operations will run on the CPU")
REJECTED = re.compile(r"^([A-Z][A-Z0-9_]*): ?(.*)$")
# Whose worker lists the ARM64 Interpreter's nodes: the Cortex-A76 model's.
ARM64_NODES_TARGET = "arm64-fp32"


@dataclass(frozen=True)
class GpuCoverage:
    file: str
    precision: str  # the accelerator's arithmetic: fp16 (default) or fp32 (enforce_f32)
    ops: int  # ops in the file
    gpu_ops: int
    cpu_ops: int
    fully_accelerated: bool  # CompiledModel.is_fully_accelerated()
    rejected: dict[str, str]  # op type -> LiteRT's reason ("" where it gives none)
    rejected_in_file: dict[str, int]  # op type -> how many ops of that type the file has

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class XnnpackCoverage:
    file: str
    machine: str  # "x86_64" or "arm64"
    ops: int
    delegated: int
    partitions: int  # XNNPACK delegate nodes: each boundary between them costs a copy out and in
    not_delegated: dict[str, int]  # op type -> count

    def to_dict(self) -> dict:
        return asdict(self)


def op_count(path: Path) -> Counter:
    """Op type -> count in the file's first subgraph (the classic Interpreter's node names)."""
    from mobilegen.runtime.tflite_file import op_kinds, schema

    _, tfl = schema()
    model = tfl.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    return Counter(op_kinds(model, tfl))


def parse_gpu_log(log: str) -> tuple[dict[str, str], tuple[int, int] | None]:
    """(op type -> reason, (gpu ops, cpu ops) or None) from LiteRT's compile log."""
    rejected: dict[str, list[str]] = {}
    split, inside = None, False
    for line in log.splitlines():
        if GPU_HEADER in line:
            inside = True
            continue
        found = GPU_SPLIT.search(line)
        if found:
            split, inside = (int(found[1]), int(found[2])), False
            continue
        match = REJECTED.match(line.strip()) if inside else None
        if match:
            reasons = rejected.setdefault(match[1], [])
            if match[2].strip() and match[2].strip() not in reasons:
                reasons.append(match[2].strip())
    return {op: "; ".join(reasons) for op, reasons in rejected.items()}, split


def gpu_coverage(path: str | Path, precision: str = "fp16", threads: int | None = None) -> GpuCoverage:
    """Compile the file for the GPU accelerator (the gpu-<precision> target's worker) and read its verdict."""
    path = Path(path)
    reply = opened(path, TARGETS[f"gpu-{precision}"], threads).reply
    rejected, split = parse_gpu_log(reply["log"])
    counts = op_count(path)
    total = sum(counts.values())
    gpu_ops, cpu_ops = split if split else (total, 0)
    return GpuCoverage(path.name, precision, total, gpu_ops, cpu_ops, bool(reply["fully_accelerated"]), rejected,
                       {op: counts.get(op, 0) for op in rejected})  # fmt: skip


def delegated_ops(nodes: list[dict]) -> tuple[set[int], int]:
    """(indices of the file's ops inside a DELEGATE node, number of DELEGATE nodes).

    The Interpreter lists the file's ops in order, then one DELEGATE node per partition with the
    partition's inputs (constants included) and outputs. A partition is everything between them:
    walk back from its outputs through producers until reaching one of its inputs."""
    ops = [n for n in nodes if n["op"] != "DELEGATE"]
    producer = {t: i for i, n in enumerate(ops) for t in n["outputs"]}
    members: set[int] = set()
    delegates = [n for n in nodes if n["op"] == "DELEGATE"]
    for d in delegates:
        inputs, stack = set(d["inputs"]), list(d["outputs"])
        while stack:
            tensor = stack.pop()
            p = producer.get(tensor)
            if tensor in inputs or p is None or p in members:
                continue
            members.add(p)
            stack += [i for i in ops[p]["inputs"] if i >= 0]
    return members, len(delegates)


def xnnpack_coverage(path: str | Path, machine: str = "x86_64", threads: int = 1) -> XnnpackCoverage:
    """XNNPACK's delegated and non-delegated ops when the classic Interpreter loads the file."""
    path = Path(path)
    if machine == "x86_64":
        nodes = litert_worker.interpreter_nodes(str(path), threads)
    elif machine == "arm64":
        # The pooled Cortex-A76 worker (started once; a second Interpreter inside it lists the nodes).
        worker = opened(path, TARGETS[ARM64_NODES_TARGET], threads).worker
        nodes = worker.request({"op": "nodes", "path": str(path.resolve()), "threads": threads})[0]["nodes"]
    else:
        raise ValueError(f"machine must be x86_64 or arm64, got {machine!r}")
    members, partitions = delegated_ops(nodes)
    ops = [n["op"] for n in nodes if n["op"] != "DELEGATE"]
    left = Counter(op for i, op in enumerate(ops) if i not in members)
    return XnnpackCoverage(path.name, machine, len(ops), len(members), partitions, dict(sorted(left.items())))
