"""The on-device sampling loop, in plain numpy: the reference for app code.

Everything comes from manifest.json and one TFLite interpreter, exactly what a
phone has. It is deliberately short: the Kotlin library in android/ (DdimSampler)
is the same loop, and tests/android/test_kotlin.py checks every intermediate x_t of the two
against each other. (Guided DDIM, eta = 0; the noise array is the only input to randomness.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# One call of the file: x [B, ...] in the file's layout, t float32 [B], y int32 [B] -> eps like x.
FileCall = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def sample_loop(
    call: FileCall,
    manifest: dict,
    label: int,
    noise: np.ndarray,
    steps: int | None = None,
    guidance: float | None = None,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The final x (float64, one image, the file's layout) from initial noise [1,3,64,64] (NCHW, as
    the sampler draws it); on_step sees x after every step."""
    io, defaults = manifest["io"], manifest["sampler_defaults"]
    abar = np.asarray(manifest["schedule"]["alphas_cumprod"], dtype=np.float64)
    T = len(abar)
    steps = steps or defaults["steps"]
    timesteps = [int(v) for v in np.round(np.linspace(T - 1, 1, steps))] if steps > 1 else [T - 1]
    scale = defaults["guidance"] if guidance is None else guidance

    def eps(x: np.ndarray, t: int, y: int) -> np.ndarray:
        # the file's fixed batch: fill it with copies (a phone would pack cond + uncond when batch is 2)
        b = io["batch"]
        xb = np.repeat(x, b, axis=0)
        return call(xb, np.full(b, t, np.float32), np.full(b, y, np.int32))[:1]

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
        if on_step is not None:
            on_step(t, x)
    return x


def to_image(x: np.ndarray, manifest: dict) -> np.ndarray:
    """uint8 HWC, as manifest.sampler_defaults.image_from_x says."""
    img = (np.clip(x, -1, 1) + 1) / 2 * 255
    img = img[0] if manifest["io"]["layout"] == "NHWC" else img[0].transpose(1, 2, 0)
    return img.astype(np.uint8)


def sample_on_device(tflite_path: str, manifest: dict, label: int, noise: np.ndarray, steps: int | None = None) -> np.ndarray:
    """One image (uint8 HWC) from initial noise [1,3,64,64] (NCHW, as the sampler draws it)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=tflite_path).get_signature_runner("serving_default")
    x = sample_loop(lambda x, t, y: runner(x=x, t=t, y=y)["eps"], manifest, label, noise, steps)
    return to_image(x, manifest)
