"""A TFLite denoiser made elsewhere (e.g. the original project's phone file), run on our contract.

Such a file computes the same (x, t, y) -> eps, but names, orders and types its inputs
its own way: the original v2 file takes x NCHW as `input`, t as `onnx__Unsqueeze_1` and the
class index as float32 `onnx__Cast_2`. The caller names the three signature inputs
(`x=input,t=onnx__Unsqueeze_1,y=onnx__Cast_2`); the layout comes from x's shape and each
dtype from the file. Called like our backends: canonical x [N,3,64,64] NCHW, t, y int.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mobilegen.errors import InvalidInput, MobileGenError


def parse_inputs(text: str) -> dict[str, str]:
    pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    if set(pairs) != {"x", "t", "y"}:
        raise InvalidInput(f"--foreign-inputs must name x, t and y as x=NAME,t=NAME,y=NAME; got {text!r}")
    return {k: v.strip() for k, v in pairs.items()}


class ForeignTFLite:
    kind = "litert"

    def __init__(self, path: Path, inputs: dict[str, str], threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner()
        details = self.runner.get_input_details()
        missing = [name for name in inputs.values() if name not in details]
        if missing:
            raise MobileGenError(f"{path.name} has no signature input {', '.join(missing)}; its inputs are {', '.join(details)}")
        self.inputs, self.details, self.name = inputs, details, f"litert:{path.name}"
        shape = tuple(details[inputs["x"]]["shape"])
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise MobileGenError(f"{path.name}: input {inputs['x']} has shape {list(shape)}, not an image [N,3,H,W] or [N,H,W,3]")
        self.nchw, self.batch = shape[1] == 3, shape[0]
        outputs = list(self.runner.get_output_details())
        if len(outputs) != 1:
            raise MobileGenError(f"{path.name} has {len(outputs)} outputs; a denoiser has one (eps)")
        self.output = outputs[0]

    def feeds(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """One fixed-batch call's inputs, in the file's names, layout and dtypes."""
        x = x if self.nchw else x.transpose(0, 2, 3, 1)
        values = {"x": np.ascontiguousarray(x), "t": t, "y": y}
        return {self.inputs[k]: v.astype(self.details[self.inputs[k]]["dtype"]) for k, v in values.items()}

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.runner(**feeds)[self.output]

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(t), self.batch):
            idx = np.arange(start, start + self.batch).clip(max=len(t) - 1)
            eps = self.run_feeds(self.feeds(x[idx], t[idx], y[idx]))
            eps = eps if self.nchw else eps.transpose(0, 3, 1, 2)
            outs.append(eps[: min(self.batch, len(t) - start)])
        return np.concatenate(outs).astype(np.float32)

    def torch_denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self(x.cpu().numpy(), t.cpu().numpy(), y.cpu().numpy())).to(x.device)
