"""The on-device sampling loop, in plain numpy: the reference for app code.

Everything comes from manifest.json and one TFLite interpreter, exactly what a
phone has. It is deliberately short: docs/android.md translates it to Kotlin line
by line. (Guided DDIM, eta = 0; the noise array is the only input to randomness.)
"""

from __future__ import annotations

import numpy as np


def sample_on_device(tflite_path: str, manifest: dict, label: int, noise: np.ndarray, steps: int | None = None) -> np.ndarray:
    """One image (uint8 HWC) from initial noise [1,3,64,64] (NCHW, as the sampler draws it)."""
    from ai_edge_litert.interpreter import Interpreter

    io, defaults = manifest["io"], manifest["sampler_defaults"]
    abar = np.asarray(manifest["schedule"]["alphas_cumprod"], dtype=np.float64)
    T = len(abar)
    steps = steps or defaults["steps"]
    timesteps = [int(v) for v in np.round(np.linspace(T - 1, 1, steps))] if steps > 1 else [T - 1]
    scale = defaults["guidance"]
    runner = Interpreter(model_path=tflite_path).get_signature_runner("serving_default")

    def eps(x: np.ndarray, t: int, y: int) -> np.ndarray:
        # the file's fixed batch: fill it with copies (a phone would pack cond + uncond when batch is 2)
        b = io["batch"]
        xb = np.repeat(x, b, axis=0)
        out = runner(x=xb, t=np.full(b, t, np.float32), y=np.full(b, y, np.int32))["eps"]
        return out[:1]

    x = noise.transpose(0, 2, 3, 1) if io["layout"] == "NHWC" else noise  # to the file's layout
    x = x.astype(np.float64)
    for k, t in enumerate(timesteps):
        xf = x.astype(np.float32)
        e = eps(xf, t, label).astype(np.float64)
        if scale > 0:
            u = eps(xf, t, -1).astype(np.float64)
            e = u + scale * (e - u)
        ab, ab_prev = abar[t], (abar[timesteps[k + 1]] if k + 1 < len(timesteps) else 1.0)
        x0 = (x - np.sqrt(1 - ab) * e) / np.sqrt(ab)
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * e
    img = (np.clip(x, -1, 1) + 1) / 2 * 255
    img = img[0] if io["layout"] == "NHWC" else img[0].transpose(1, 2, 0)
    return img.astype(np.uint8)
