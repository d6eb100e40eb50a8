"""A LiteRT worker process, and the framed protocol both sides speak over its stdin/stdout.

Run as a script (`python litert_worker.py`) by the x86 venv's Python or by an emulated arm64
Python (runtime/targets.py starts it), so it imports only the standard library, numpy and,
inside its handlers, ai_edge_litert: never mobilegen, which is not installed on the arm64 side.

A message is a JSON header frame, then one frame per array the header names, each array in
.npy format. A frame is an 8-byte little-endian length, then that many bytes. The worker
answers each request with one message; a failure is a header with "error" (and no arrays).
Everything the native libraries print while a request runs (LiteRT logs, per rejected op, why
the GPU refused it) is captured and returned as the header's "log".
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import tempfile

import numpy as np

SIGNATURE = "serving_default"
# XNNPACK's flag that makes it compute in float16 where the CPU has FP16 arithmetic
# (XNN_FLAG_FORCE_FP16_INFERENCE; TfLiteXNNPackDelegateOptions.flags).
XNNPACK_FORCE_FP16 = 4


def write_frame(stream, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)


def read_frame(stream) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other side closed the stream")
    size = struct.unpack("<Q", head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError(f"the stream ended inside a frame ({len(data)} of {size} bytes)")
    return data


def write_message(stream, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = arrays or {}
    write_frame(stream, json.dumps({**header, "arrays": list(arrays)}).encode())
    for value in arrays.values():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        write_frame(stream, buf.getvalue())
    stream.flush()


def read_message(stream) -> tuple[dict, dict[str, np.ndarray]]:
    header = json.loads(read_frame(stream))
    arrays = {name: np.load(io.BytesIO(read_frame(stream)), allow_pickle=False) for name in header.pop("arrays", [])}
    return header, arrays


class Model:
    """One .tflite file opened one way: CompiledModel on "cpu" or "gpu", or the classic Interpreter."""

    def __init__(self, path: str, api: str, accelerator: str = "cpu", enforce_f32: bool = False,
                 xnnpack_flags: int | None = None, threads: int = 1):  # fmt: skip
        self.api = api
        if api == "interpreter":
            from ai_edge_litert.interpreter import Interpreter

            self.interpreter = Interpreter(model_path=path, num_threads=threads)
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
            details = self.runner.get_input_details() | self.runner.get_output_details()
            self.io = {k: [[int(d) for d in v["shape"]], np.dtype(v["dtype"]).name] for k, v in details.items()}
            self.fully_accelerated = None
            return
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, GpuOptions, HardwareAccelerator, Options

        accel = HardwareAccelerator.CPU | (HardwareAccelerator.GPU if accelerator == "gpu" else 0)
        options = Options(hardware_accelerators=accel, cpu_options=CpuOptions(num_threads=threads, xnnpack_flags=xnnpack_flags),
                          gpu_options=GpuOptions(enforce_f32=enforce_f32))  # fmt: skip
        self.model = CompiledModel.from_file(path, options=options)
        details = self.model.get_input_tensor_details(SIGNATURE) | self.model.get_output_tensor_details(SIGNATURE)
        self.io = {k: [[int(d) for d in v["shape"]], np.dtype(v["dtype"]).name] for k, v in details.items()}
        names = self.model.get_signature_list()[SIGNATURE]
        self.inputs = {n: self.model.create_input_buffer_by_name(SIGNATURE, n) for n in names["inputs"]}
        self.outputs = {n: self.model.create_output_buffer_by_name(SIGNATURE, n) for n in names["outputs"]}
        self.fully_accelerated = self.model.is_fully_accelerated() if accelerator == "gpu" else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.api == "interpreter":
            return {k: np.array(v) for k, v in self.runner(**feeds).items()}
        for name, buffer in self.inputs.items():
            buffer.write(np.ascontiguousarray(feeds[name], dtype=self.io[name][1]))
        self.model.run_by_name(SIGNATURE, self.inputs, self.outputs)
        out = {}
        for name, buffer in self.outputs.items():
            shape, dtype = self.io[name]
            out[name] = buffer.read(int(np.prod(shape)), np.dtype(dtype)).reshape(shape)
        return out


def interpreter_nodes(path: str, threads: int = 1) -> list[dict]:
    """The classic Interpreter's nodes after its default delegate (XNNPACK) took what it could:
    the file's ops in order, then one DELEGATE node per partition (its inputs and outputs)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    return [{"op": d["op_name"], "inputs": [int(i) for i in d["inputs"]], "outputs": [int(i) for i in d["outputs"]]}
            for d in interpreter._get_ops_details()]  # fmt: skip


def handle(state: dict, header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    op = header.get("op")
    if op == "open":
        state["model"] = Model(**header["options"])
        return {"io": state["model"].io, "fully_accelerated": state["model"].fully_accelerated}, {}
    if op == "run":
        if "model" not in state:
            raise RuntimeError("run before open")
        return {}, state["model"].run(arrays)
    if op == "nodes":
        return {"nodes": interpreter_nodes(header["path"], header.get("threads", 1))}, {}
    raise ValueError(f"unknown request {op!r}")


def serve(proto_in, proto_out) -> None:
    """Answer requests until stdin closes; native output goes to a capture file per request."""
    state: dict = {}
    with tempfile.TemporaryFile() as capture:
        while True:
            try:
                header, arrays = read_message(proto_in)
            except EOFError:
                return
            capture.seek(0)
            capture.truncate()
            saved = os.dup(2)
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            try:
                reply, out = handle(state, header, arrays)
            except Exception as exc:  # noqa: BLE001 (every failure goes back to the caller, with the log)
                reply, out = {"error": f"{type(exc).__name__}: {exc}"}, {}
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            reply["log"] = capture.read().decode(errors="replace")
            write_message(proto_out, reply, out)


def main() -> None:
    # The protocol keeps the real stdout; fd 1 itself goes to stderr, so that nothing a native
    # library prints can corrupt a frame.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, proto_out)


if __name__ == "__main__":
    main()
