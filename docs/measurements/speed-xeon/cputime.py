"""On-CPU time of one denoising step per file, one thread (process_time): the comparison that a
host stealing CPU time from this VM does not distort (wall time does; see README.md).

    .venv/bin/python docs/measurements/speed-xeon/cputime.py ROUNDS name=path [name=path ...]

A name starting with "foreign" is run with the original project's input names; .onnx files run on
onnxruntime, .tflite files on LiteRT (XNNPACK), all with 1 thread. Files take turns for ROUNDS
rounds of 5 calls after 3 warm-up calls each; the median and minimum are printed per file, with
the ratio to the first file's median.
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.runtime.backends import open_artifact
from mobilegen.verify.foreign import ForeignTFLite, parse_inputs

ORIGINAL_INPUTS = "x=input,t=onnx__Unsqueeze_1,y=onnx__Cast_2"


def step_call(name: str, path: Path, x, t, y):
    if name.startswith("foreign"):
        backend = ForeignTFLite(path, parse_inputs(ORIGINAL_INPUTS), threads=1)
        feeds = backend.feeds(x, t, y)
        return lambda: backend.run_feeds(feeds)
    spec = DenoiserSpec(layout="NHWC")  # the tflite command's files, its ONNX included
    backend, x_file = open_artifact(path, spec, threads=1), spec.to_layout(x)
    return lambda: backend.raw_call(x_file, t, y)


def main() -> None:
    rounds = int(sys.argv[1])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.full((1,), 500.0, np.float32), np.zeros((1,), np.int32)
    calls = {name: step_call(name, Path(path), x, t, y) for name, path in (a.split("=", 1) for a in sys.argv[2:])}
    for call in calls.values():
        for _ in range(3):
            call()
    cpu: dict[str, list[float]] = {n: [] for n in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(5):
                start = time.process_time()
                call()
                cpu[name].append((time.process_time() - start) * 1e3)
    first = statistics.median(cpu[next(iter(calls))])
    for name, samples in cpu.items():
        med = statistics.median(samples)
        print(f"{name:<16} cpu median {med:7.1f} ms  min {min(samples):7.1f}  first/this {first / med:5.3f}x")


if __name__ == "__main__":
    main()
