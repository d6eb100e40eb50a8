"""Run the denoiser on any backend behind one interface.

A backend is called with numpy arrays in the contract's canonical form -- x float32
[N,3,64,64] NCHW, t float32 [N], y int32 [N] -- for any N, and returns eps in the
same form. Artifact backends split N into calls of the artifact's fixed batch and
convert to the artifact's layout, exactly as app code on a phone would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.errors import InvalidInput, ManifestError, MissingDependencyError
from mobilegen.models import UNet

NumpyDenoiser = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def default_threads() -> int:
    """The CPUs this process may run on (taskset, cpusets), not every core of the machine."""
    return len(os.sched_getaffinity(0))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from mobilegen.errors import MobileGenError

        raise MobileGenError("--device cuda was requested but no CUDA device is available; use auto or cpu")
    return torch.device(device)


class TorchBackend:
    kind = "pytorch"

    def __init__(self, model: UNet, device: str = "cpu", attention: str = "sdpa"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().set_attention(attention)
        self.name = f"pytorch-{self.device.type}-{attention}"

    @torch.inference_mode()
    def torch_denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device), t.to(self.device), y.to(self.device)).float()

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = self.torch_denoise(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
        return out.cpu().numpy()


ONNX_TYPES = {"tensor(float)": "float32", "tensor(int32)": "int32"}


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def check_io(found: dict[str, tuple[list, str]], spec: DenoiserSpec, path: str | Path) -> None:
    """The file's inputs and outputs (name -> shape, dtype) must be the manifest's contract."""
    want = {s.name: (list(s.shape), s.dtype) for s in spec.inputs + spec.outputs}
    got = {name: (list(shape), ONNX_TYPES.get(dtype, dtype)) for name, (shape, dtype) in found.items()}
    if got != want:
        raise ManifestError(
            f"{path}: the file's inputs/outputs {got} do not match the manifest's io contract {want} "
            f"(batch {spec.batch}, layout {spec.layout})"
        )


class FixedBatch:
    """Split any N into calls of spec.batch, padding the last call by repetition."""

    spec: DenoiserSpec

    def raw_call(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        b, n = self.spec.batch, len(t)
        outs = []
        for start in range(0, n, b):
            idx = np.arange(start, start + b).clip(max=n - 1)
            eps = self.raw_call(self.spec.to_layout(x[idx]), t[idx].astype(np.float32), y[idx].astype(np.int32))
            outs.append(self.spec.from_layout(eps)[: min(b, n - start)])
        return np.concatenate(outs).astype(np.float32)

    def torch_denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self(x.cpu().numpy(), t.cpu().numpy(), y.cpu().numpy())
        return torch.from_numpy(out).to(x.device)


class OnnxBackend(FixedBatch):
    kind = "onnxruntime"

    def __init__(self, path: str | Path, spec: DenoiserSpec, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime", "running ONNX files") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a malformed file
            raise ManifestError(f"{path}: not a loadable ONNX model ({first_line(exc)})") from None
        self.spec, self.name = spec, f"onnxruntime:{Path(path).name}"
        check_io({i.name: (i.shape, i.type) for i in self.session.get_inputs() + self.session.get_outputs()}, spec, path)

    def raw_call(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.session.run(["eps"], {"x": x, "t": t, "y": y})[0]


class TFLiteBackend(FixedBatch):
    kind = "litert"

    def __init__(self, path: str | Path, spec: DenoiserSpec, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingDependencyError("ai-edge-litert", "running TFLite files") from None
        # Stock interpreter, default delegate (XNNPACK on CPU): what an app gets.
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or default_threads())
            self.runner = self.interpreter.get_signature_runner("serving_default")
        except (ValueError, RuntimeError) as exc:
            raise ManifestError(
                f"{path}: not a loadable TFLite model with a serving_default signature ({first_line(exc)})"
            ) from None
        self.spec, self.name = spec, f"litert:{Path(path).name}"
        details = self.runner.get_input_details() | self.runner.get_output_details()
        check_io({k: (list(v["shape"]), np.dtype(v["dtype"]).name) for k, v in details.items()}, spec, path)

    def raw_call(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.runner(x=x, t=t, y=y)["eps"]


def open_artifact(path: str | Path, spec: DenoiserSpec, threads: int | None = None) -> OnnxBackend | TFLiteBackend:
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxBackend(path, spec, threads)
    if path.suffix == ".tflite":
        return TFLiteBackend(path, spec, threads)
    raise InvalidInput(f"{path}: not an ONNX or TFLite file")
