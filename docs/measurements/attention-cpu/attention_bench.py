"""Where a v2 step's time goes in TFLite, and whether another attention formulation helps.

Part 1, the block: the real v2 network exported as usual, and once more with the
64x64 attention block (sa6) replaced by the identity; the difference is that block's
cost in the file an app runs.

Part 2, its pieces: sa6's attention core at its real shape (4 heads x 4096 tokens x
16 dims), each piece converted alone with the same route (ONNX -> onnx2tf
flatbuffer_direct) and timed in LiteRT + XNNPACK:
  qk        scores = q @ k^T                      (1.07 GMAC)
  softmax   softmax over 4 x 4096 x 4096 scores   (67 M exps)
  av        probs @ v                             (1.07 GMAC)
  attention the three together, as in the exported network
  chunked   the same, queries in 16 chunks of 256 (a chunk's scores stay in cache)
  exp-bound softmax without its max and normalisation passes: exp(q.k - m) with m
            an upper bound |q| max|k| folded into the matmul, and the sum taken by
            a ones column of v (exact up to rounding while no row underflows)

    .venv/bin/python docs/measurements/attention-cpu/attention_bench.py [--threads 2]

Timings: warm-up 3, then 15 calls; median and p90. All in one process, one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.onnx import export_onnx
from mobilegen.export.tflite import convert_onnx_to_tflite
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.runtime.backends import open_artifact
from mobilegen.verify.timing import machine, summarize, time_calls

REAL_V2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "mobilegen_v2_student.pt"
HEADS, TOKENS, DIM = 4, 4096, 16


class Scores(torch.nn.Module):
    def forward(self, q, k):
        return q @ k.transpose(-1, -2)


class Softmax(torch.nn.Module):
    def forward(self, s):
        return torch.softmax(s, dim=-1)


class Mix(torch.nn.Module):
    def forward(self, p, v):
        return p @ v


class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


class Chunked(torch.nn.Module):
    """The same attention, queries in chunks of 256: each chunk's scores are 4 x 256 x 4096."""

    def forward(self, q, k, v):
        kt = k.transpose(-1, -2)
        return torch.cat([torch.softmax(q[:, :, s : s + 256] @ kt, dim=-1) @ v for s in range(0, TOKENS, 256)], dim=2)


class ExpBound(torch.nn.Module):
    def forward(self, q, k, v):
        m = q.norm(dim=-1, keepdim=True) * k.norm(dim=-1).amax(-1, keepdim=True)[..., None]
        one = torch.ones_like(m)
        e = torch.exp(torch.cat([q, -m], -1) @ torch.cat([k, one], -1).transpose(-1, -2))
        o = e @ torch.cat([v, one], -1)
        return o[..., :-1] / o[..., -1:]


def stats(ms: list[float]) -> str:
    s = summarize(ms)
    return f"median {s['median_ms']:7.2f} ms   p90 {s['p90_ms']:7.2f} ms"


def piece(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], work: Path, threads: int) -> tuple[list[float], np.ndarray]:
    import onnx2tf
    from ai_edge_litert.interpreter import Interpreter

    names = [f"i{j}" for j in range(len(inputs))]
    torch.onnx.export(module, inputs, str(work / "m.onnx"), dynamo=False, opset_version=17, input_names=names)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        onnx2tf.convert(input_onnx_file_path=str(work / "m.onnx"), output_folder_path=str(work / "out"),
                        tflite_backend="flatbuffer_direct", non_verbose=True, keep_shape_absolutely_input_names=names)  # fmt: skip
    interpreter = Interpreter(model_path=str(next((work / "out").glob("*_float32.tflite"))), num_threads=threads)
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], value.numpy().reshape(detail["shape"]))
    ms = time_calls(interpreter.invoke, warmup=3, repeats=15)
    return ms, interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=REAL_V2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine()['cpu']}, {args.threads} threads, batch 1")

    spec = DenoiserSpec(layout="NHWC")
    model = load_checkpoint(args.checkpoint).model
    x = spec.to_layout(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    t, y = np.array([500.0], np.float32), np.array([3], np.int32)
    with tempfile.TemporaryDirectory(prefix="mobilegen-attn-") as tmp:
        runners = {}
        for name in ("v2 step", "v2 step without sa6"):
            work = Path(tmp) / name.replace(" ", "_")
            work.mkdir()
            if name.endswith("sa6"):
                model.sa6.forward = lambda h: h  # the identity, for this export only
            onnx = export_onnx(model, spec, work / "denoiser.onnx")
            runners[name] = open_artifact(convert_onnx_to_tflite(onnx, spec, work), spec, args.threads).raw_call
            model.sa6.__dict__.pop("forward", None)
        for name, run in runners.items():
            print(f"{name:<22} {stats(time_calls(lambda run=run: run(x, t, y), warmup=3, repeats=15))}")

        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn((1, HEADS, TOKENS, DIM), generator=gen) * 0.5 for _ in range(3))
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        pieces = {"qk": (Scores(), (q, k)), "softmax": (Softmax(), (q @ k.transpose(-1, -2),)), "av": (Mix(), (probs, v)),
                  "attention": (Attention(), (q, k, v)), "chunked": (Chunked(), (q, k, v)),
                  "exp-bound": (ExpBound(), (q, k, v))}  # fmt: skip
        outputs = {}
        for name, (module, inputs) in pieces.items():
            work = Path(tmp) / name
            work.mkdir()
            ms, outputs[name] = piece(module, inputs, work, args.threads)
            print(f"sa6 {name:<18} {stats(ms)}")
        for name in ("chunked", "exp-bound"):
            print(f"{name} vs attention: max abs difference {np.abs(outputs[name] - outputs['attention']).max():.2e}")


if __name__ == "__main__":
    main()
