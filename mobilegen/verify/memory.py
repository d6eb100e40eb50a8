"""Memory of one denoising step measured the way an app sees it, and the memory gate.

Each file runs in a fresh Python process that imports only its runtime (LiteRT or
onnxruntime) and numpy: what an app pays, without PyTorch or our code in the process.
The process resets its peak-RSS counter once the runtime is imported (writing 5 to
/proc/self/clear_refs), loads the file, runs `invokes` calls, and reports VmHWM (peak
resident set, /proc/self/status) minus the RSS it had before loading. PyTorch is measured
the same way (a process importing torch and our model code) for the reference.
For TFLite files the largest intermediate tensor and the peak of the bytes alive at once
in operator order (the arena that order needs) are read from the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mobilegen.contract.gates import GateResult

METHOD = (
    "fresh subprocess importing only the runtime and numpy; peak RSS = VmHWM (/proc/self/status) after load "
    "+ {invokes} invokes, minus VmRSS before loading; peak counter reset after the imports (/proc/self/clear_refs)"
)
INVOKES = 2

# Gates: peak RSS over the bare process, per precision, at batch 1. A batch-B file may use
# 1.5x its batch-1 figure for B = 2, and proportionally more beyond. The float16 file meets
# issue 17's 48 MB target on the real v2 (46.2 MB; 47.1 on the untrained default) but its gate
# keeps the float32 figure: its peak depends on how LiteRT splits the graph into XNNPACK
# partitions (each boundary holds tensors), which differs between LiteRT versions and CPUs,
# and 1-2 MB of headroom would make the gate fail on a machine that is merely different.
# The targets are for the phone model, student_v2 (the default architecture). The teacher and
# student_v1 have no default limit: their peaks are measured and recorded, and gated only when
# --max-memory-mb is given (measured, untrained weights, batch 1: teacher 211.6 MB fp32, v1 75.7 MB).
MAX_MEMORY_MB = {"float32": 64.0, "float16": 64.0, "int8_dynamic": 48.0, "int8_full": 48.0, "onnx": 96.0}
GATED_ARCHS = ("student_v2",)

_PROBE = r"""
import json, sys
def status():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    return out
kind, path, inputs, threads, invokes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
import numpy as np
if kind == "tflite":
    from ai_edge_litert.interpreter import Interpreter
elif kind == "onnx":
    import onnxruntime as ort
else:
    import torch
    from mobilegen.models.checkpoint import load_checkpoint, default_model
    from mobilegen.models.budget import bound_heap, set_bounded_attention
    torch.set_num_threads(threads)
feeds = dict(np.load(inputs))
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
bare = status()["VmRSS"]
if kind == "tflite":
    interpreter = Interpreter(model_path=path, num_threads=threads)
    run = interpreter.get_signature_runner()
    call = lambda: run(**feeds)
elif kind == "onnx":
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    call = lambda: session.run(None, feeds)
else:
    spec = json.loads(path)
    loaded = load_checkpoint(spec["checkpoint"]) if spec["checkpoint"] else default_model()
    model = loaded.model.eval().set_attention(spec["attention"])
    if spec["max_tensor_mb"] is not None:
        set_bounded_attention(model, len(feeds["t"]), spec["max_tensor_mb"])
        bound_heap()
    args = [torch.from_numpy(feeds[k]) for k in ("x", "t", "y")]
    def call():
        with torch.inference_mode():
            model(*args)
loaded_mb = status()["VmHWM"] - bare
for _ in range(invokes):
    call()
print(json.dumps({"peak_rss_mb": status()["VmHWM"] - bare, "after_load_mb": loaded_mb, "bare_rss_mb": bare, "reset": reset}))
"""


def _probe(kind: str, target: str, feeds: dict[str, np.ndarray], threads: int, invokes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mobilegen-mem-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **feeds)
        env_path = str(Path(__file__).resolve().parents[2])
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, kind, target, str(inputs), str(threads), str(invokes)],
            capture_output=True,
            text=True,
            timeout=600,
            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads)},
        )
    if proc.returncode != 0:
        from mobilegen.errors import MobileGenError

        raise MobileGenError(f"memory probe of {target} failed: {proc.stderr.strip()[-1500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def contract_feeds(spec, x: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Inputs of one call in the artifact's layout: x_t at t = 500, class 0."""
    if x is None:
        x = np.random.default_rng(0).standard_normal((spec.batch, 3, spec.image_size, spec.image_size)).astype(np.float32)
    return {"x": spec.to_layout(x), "t": np.full((spec.batch,), 500.0, np.float32), "y": np.zeros((spec.batch,), np.int32)}


def measure_file(path: Path, feeds: dict[str, np.ndarray], threads: int, invokes: int = INVOKES) -> dict:
    """Peak RSS of a fresh process running the file (and, for TFLite, what the file itself needs)."""
    kind = "tflite" if path.suffix == ".tflite" else "onnx"
    result = _probe(kind, str(path), feeds, threads, invokes)
    if kind == "tflite":
        from mobilegen.runtime.tflite_file import graph_memory

        result["graph"] = graph_memory(path).to_dict()
    result["method"] = METHOD.format(invokes=invokes)
    result["threads"] = threads
    return result


def measure_torch(
    checkpoint: str | None,
    batch: int,
    threads: int,
    attention: str = "sdpa",
    max_tensor_mb: float | None = None,
    invokes: int = INVOKES,
) -> dict:
    """The PyTorch reference measured the same way (torch + our model code imported before the reset)."""
    from mobilegen.contract.spec import DenoiserSpec

    feeds = contract_feeds(DenoiserSpec(batch=batch))
    target = json.dumps({"checkpoint": checkpoint, "attention": attention, "max_tensor_mb": max_tensor_mb})
    result = _probe("torch", target, feeds, threads, invokes)
    result["method"] = METHOD.format(invokes=invokes).replace("the runtime and numpy", "torch, numpy and mobilegen")
    result |= {"threads": threads, "attention": attention, "max_tensor_mb": max_tensor_mb}
    return result


def memory_limit(arch: str, precision: str, batch: int, override: float | None = None) -> float | None:
    """The limit in MB, or None where the architecture has no default and none was given."""
    if override is not None:
        return override
    if arch not in GATED_ARCHS:
        return None
    return MAX_MEMORY_MB[precision] * (1.0 if batch == 1 else 1.5 * batch / 2)


def limit_text(limit_mb: float | None) -> str:
    return "not gated" if limit_mb is None else f"limit {limit_mb:g}"


def check_memory(name: str, measured: dict, limit_mb: float | None) -> list[str]:
    """The gate: a failure message naming the measured peak and the largest tensor, or nothing."""
    peak = measured["peak_rss_mb"]
    if limit_mb is None or peak <= limit_mb:
        return []
    graph = measured.get("graph")
    largest = (
        (
            f"; its largest intermediate tensor is {graph['largest_tensor']!r} {graph['largest_tensor_shape']} "
            f"({graph['largest_tensor_mb']:.1f} MB), {graph['peak_live_mb']:.1f} MB alive at once"
        )
        if graph
        else ""
    )
    return [f"{name}: peak RSS {peak:.1f} MB over the bare process exceeds --max-memory-mb {limit_mb:g}{largest}"]


def memory_gate(name: str, measured: dict, limit_mb: float | None, budget_mb: float | None) -> GateResult:
    """The memory gate of one file: peak RSS within its limit, largest tensor within the budget."""
    failures = check_memory(name, measured, limit_mb)
    graph = measured.get("graph")
    if graph and budget_mb is not None and graph["largest_tensor_bytes"] > budget_mb * 2**20:
        failures.append(
            f"{name}: tensor {graph['largest_tensor']!r} {graph['largest_tensor_shape']} is "
            f"{graph['largest_tensor_mb']:.2f} MB, over --max-tensor-mb {budget_mb:g}"
        )
    text = f"{'FAIL' if failures else 'PASS'} {name}: peak RSS {measured['peak_rss_mb']:.1f} MB ({limit_text(limit_mb)})"
    text += f", largest tensor {graph['largest_tensor_mb']:.2f} MB" if graph else ""
    text += f": {'; '.join(failures)}" if failures else ""
    figures = {"peak_rss_mb": measured["peak_rss_mb"], "limit_mb": limit_mb, "max_tensor_mb": budget_mb}
    return GateResult("memory", name, tuple(failures), figures, text)
