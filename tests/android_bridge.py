"""eps from a real .tflite file for the Kotlin sampler test (tests/android/test_kotlin.py).

    python tests/android_bridge.py FILE.tflite

Reads calls from stdin and answers each on stdout, float32/int32 little-endian, at the
file's fixed batch B: x (B images, in the file's layout), t [B] float32, y [B] int32 in;
eps (like x) out. Nothing else: the loop, the manifest and the layout are the Kotlin side's.
The interpreter is the one `mobilegen-export sample` uses (stock LiteRT, default threads).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main(path: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    # As mobilegen.runtime.backends.TFLiteBackend opens it (without importing torch, to start fast).
    runner = Interpreter(model_path=path, num_threads=len(os.sched_getaffinity(0))).get_signature_runner("serving_default")
    shape = tuple(runner.get_input_details()["x"]["shape"])
    batch, n = shape[0], int(np.prod(shape))
    size = 4 * (n + 2 * batch)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    calls = 0
    while True:
        raw = stdin.read(size)
        if not raw:
            print(f"android_bridge: calls={calls}", file=sys.stderr)
            return
        if len(raw) != size:
            raise SystemExit(f"android_bridge: a call is {size} bytes, got {len(raw)}")
        x = np.frombuffer(raw, "<f4", n).reshape(shape)
        t = np.frombuffer(raw, "<f4", batch, 4 * n)
        y = np.frombuffer(raw, "<i4", batch, 4 * (n + batch))
        stdout.write(np.ascontiguousarray(runner(x=x, t=t, y=y)["eps"], dtype="<f4").tobytes())
        stdout.flush()
        calls += 1


if __name__ == "__main__":
    main(sys.argv[1])
