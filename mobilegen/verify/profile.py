"""Where a step's time goes: per operator type and per UNet block, on LiteRT and onnxruntime.

LiteRT's Python API reaches no op profiler, so a TFLite file is profiled by cutting it up:
every operator becomes a one-operator model (its weights kept, its other inputs fed the
values the whole graph computes for the profiling case) and every block a model of its
operators in file order (so XNNPACK fuses inside a block as it does in the file); each is
timed alone with the file's threads. onnxruntime's own profiler gives its per-node kernel
times on the ONNX file. Both sides are grouped by the UNet module their tensor or node name
carries (`/unet/<block>/...`; the one graph both files come from), and each block is set
beside its floor (verify/cuts.py block_floors): its MACs at the machine's SGEMM peak, or
the bytes any lowering must move (the block's inputs, outputs and weights) at the
machine's copy bandwidth, whichever is larger, both measured in the same run. The bytes
this lowering's operators read and write ("traffic") are shown beside it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from mobilegen.errors import MobileGenError
from mobilegen.verify.cuts import TFLiteGraph, block_floors, block_of
from mobilegen.verify.timing import copy_bandwidth_gbs, timed


class ProfileError(MobileGenError):
    pass


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeats)) * 1e3


def feeds_for(details: list[dict]) -> dict[str, np.ndarray]:
    """The profiling case: x standard normal (seed 0), t = 500, class 0."""
    rng, out = np.random.default_rng(0), {}
    for d in details:
        if np.issubdtype(d["dtype"], np.floating):
            shape = tuple(d["shape"])
            out[d["name"]] = rng.standard_normal(shape).astype(d["dtype"]) if len(shape) > 1 else np.full(shape, 500, d["dtype"])
        else:
            out[d["name"]] = np.zeros(tuple(d["shape"]), d["dtype"])
    return out


def fed_interpreter(path: Path, threads: int, **options):
    """A LiteRT interpreter of the file with the profiling case set as its inputs."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # preserve_all_tensors warns "for debugging purposes only": this is one
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(path), num_threads=threads, **options)
    it.allocate_tensors()
    details = it.get_input_details()
    for d, value in zip(details, feeds_for(details).values()):
        it.set_tensor(d["index"], value)
    return it


def tflite_values(path: Path, threads: int) -> dict[int, np.ndarray]:
    """Every tensor's value in one step of the profiling case (the cut models' inputs)."""
    it = fed_interpreter(path, threads, experimental_preserve_all_tensors=True)
    it.invoke()
    values = {}
    for d in it.get_tensor_details():
        try:
            values[d["index"]] = it.get_tensor(d["index"]).copy()
        except ValueError:
            continue
    return values


def time_cut(content: bytes, inputs: list[int], values: dict, threads: int, warmup: int, repeats: int) -> float:
    """Median ms of a cut model fed the whole graph's values; ProfileError naming LiteRT's reason if it cannot run."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_content=content, num_threads=threads)
        it.allocate_tensors()
        for d, t in zip(it.get_input_details(), inputs):
            it.set_tensor(d["index"], values[t].reshape(d["shape"]).astype(d["dtype"]))
        return median_ms(it.invoke, warmup, repeats)
    except (RuntimeError, ValueError) as exc:
        raise ProfileError(f"a cut of the file does not run on LiteRT: {str(exc).splitlines()[0]}") from exc


def profile_tflite(path: Path, threads: int, warmup: int = 3, repeats: int = 15) -> dict:
    """Whole-step time, then every operator and every block cut out and timed alone."""
    g = TFLiteGraph(path)
    step_ms = median_ms(fed_interpreter(path, threads).invoke, warmup, repeats)
    values = tflite_values(path, threads)
    ops = []
    for j, kind in enumerate(g.kinds):
        if j in g.weight_ops:
            continue
        ms = time_cut(*g.cut([j]), values, threads, warmup, repeats)
        ops.append({"index": j, "type": kind, "block": g.block(j), "ms": ms, "macs": g.macs(j), "bytes": g.activation_bytes(j)})
    blocks = {}
    for name in dict.fromkeys(op["block"] for op in ops):
        members = [op["index"] for op in ops if op["block"] == name]
        content, inputs = g.cut(members)
        blocks[name] = {"ops": len(members), "ms": time_cut(content, inputs, values, threads, warmup, repeats)}
    return {"step_ms": step_ms, "operators": ops, "blocks_timed": blocks}


def profile_onnx(path: Path, threads: int, warmup: int = 3, repeats: int = 15) -> dict:
    """onnxruntime's profiler: each node's kernel time (median over the timed runs) and the whole step."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        details = [
            {"name": i.name, "shape": [d if isinstance(d, int) else 1 for d in i.shape], "dtype": _ort_dtype(i.type)}
            for i in session.get_inputs()
        ]
        feeds = feeds_for(details)
        step_ms = median_ms(lambda: session.run(None, feeds), warmup, repeats)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    kinds = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            times[node].append(e["dur"] / 1e3)
            kinds[node] = e.get("args", {}).get("op_name", "?")
    ops = [
        {"name": node, "type": kinds[node], "block": block_of(node), "ms": statistics.median(ms[warmup:] or ms)}
        for node, ms in times.items()
    ]
    return {"step_ms": step_ms, "operators": ops}


def _ort_dtype(type_name: str):
    return {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}.get(type_name, np.float32)


def summarize(profile: dict, block_floor: dict[str, dict]) -> dict:
    """Totals per operator type and per block; blocks carry their floor (from the TFLite graph's shapes)."""
    per_type: dict[str, dict] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    per_block: dict[str, dict] = defaultdict(lambda: {"ops": 0, "ms": 0.0})
    for op in profile["operators"]:
        per_type[op["type"]]["count"] += 1
        per_type[op["type"]]["ms"] += op["ms"]
        per_block[op["block"]]["ops"] += 1
        per_block[op["block"]]["ms"] += op["ms"]
    for name, row in per_block.items():
        row.update(block_floor.get(name, {}))
        if name in profile.get("blocks_timed", {}):
            row["block_ms"] = profile["blocks_timed"][name]["ms"]
        measured = row.get("block_ms", row["ms"])
        if row.get("floor_ms"):
            row["vs_floor"] = measured / row["floor_ms"]
    return {
        "step_ms": profile["step_ms"],
        "sum_of_ops_ms": sum(op["ms"] for op in profile["operators"]),
        "per_type": dict(sorted(per_type.items(), key=lambda kv: -kv[1]["ms"])),
        "per_block": dict(per_block),
    }


def profile_files(files: dict[str, Path], threads: int, warmup: int = 3, repeats: int = 15) -> dict:
    """Every file of an export profiled in one run, with the machine's SGEMM peak and copy bandwidth."""
    from mobilegen.verify.timing import machine, sgemm_peak_gflops

    gflops, bandwidth = sgemm_peak_gflops(threads), copy_bandwidth_gbs()
    out: dict = {"machine": machine(), "threads": threads, "warmup": warmup, "repeats": repeats}
    out |= {"sgemm_gflops": gflops, "copy_bandwidth_gbs": bandwidth, "files": {}}
    reference_floors: dict[str, dict] = {}
    for name, path in sorted(files.items(), key=lambda kv: kv[1].suffix != ".tflite"):
        if path.suffix == ".tflite":
            floors = block_floors(TFLiteGraph(path), gflops, bandwidth)
            reference_floors = reference_floors or floors
            raw = profile_tflite(path, threads, warmup, repeats)
            runtime = "LiteRT (XNNPACK)"
        else:
            floors, raw, runtime = reference_floors, profile_onnx(path, threads, warmup, repeats), "onnxruntime (CPU)"
        out["files"][name] = {"runtime": runtime, **summarize(raw, floors), "operators": raw["operators"]}
    return out


BLOCK_HEADER = ["block", "ops", "ops ms", "block ms", "GMACs", "MB in+out+weights", "traffic MB", "floor ms", "bound", "vs floor"]


def block_row(block: str, row: dict) -> list[str]:
    """A block's cells; block ms and traffic only where the block was cut out (TFLite: its lowering's bytes)."""
    from mobilegen.verify.tables import number

    timed_alone = "block_ms" in row
    return [
        block,
        str(row["ops"]),
        number(row["ms"], ".2f"),
        number(row.get("block_ms"), ".2f"),
        number(row.get("gmacs", 0), ".3f"),
        number(row.get("mbytes", 0), ".1f"),
        number(row["traffic_mbytes"] if timed_alone else None, ".1f"),
        number(row.get("floor_ms"), ".2f"),
        row.get("bound", "-"),
        number(row.get("vs_floor"), ".1f", "x"),
    ]


def render(profile: dict) -> str:
    """profile.md: per file the step, per operator type and per block against its floor."""
    from mobilegen.verify.tables import number, table
    from mobilegen.verify.timing import machine_line

    m = profile["machine"]
    isa = m.get("cpu_class", {})
    lines = [
        "# Where a step's time goes",
        "",
        f"Machine: {machine_line(m)}; CPU family {isa.get('family', '?')} model {isa.get('model', '?')}, "
        f"widest vector ISA {isa.get('vector_isa', '?')}. {profile['threads']} threads, batch 1; "
        f"SGEMM peak {profile['sgemm_gflops']:.1f} GFLOP/s (torch.mm 2048^3), copy bandwidth "
        f"{profile['copy_bandwidth_gbs']:.1f} GB/s (numpy, read + write), both measured in this run. "
        f"Times: median of {profile['repeats']} calls after {profile['warmup']} warm-up calls.",
        "",
    ]
    files = profile["files"]
    rows = [
        [n, f["runtime"], number(f["step_ms"], ".2f"), number(f["sum_of_ops_ms"], ".2f"), str(len(f["operators"]))]
        for n, f in files.items()
    ]
    lines += table(["file", "runtime", "step ms", "sum of operators ms", "operators"], "llrrr", rows)
    for name, f in files.items():
        total = f["sum_of_ops_ms"] or 1.0
        rows = [
            [kind, str(r["count"]), number(r["ms"], ".2f"), number(100 * r["ms"] / total, ".1f", "%")]
            for kind, r in f["per_type"].items()
        ]
        lines += ["", f"## {name} ({f['runtime']})", "", *table(["operator type", "count", "ms", "share"], "lrrr", rows), ""]
        lines += table(BLOCK_HEADER, "lrrrrrrrlr", [block_row(block, r) for block, r in f["per_block"].items()])
    return "\n".join(lines) + "\n"
