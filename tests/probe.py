"""The conformance data's deterministic probe weights, rebuilt without any RNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"


def expected_shapes() -> dict[str, dict[str, list[int]]]:
    return json.loads((DATA / "state_dict_shapes.json").read_text())


def probe_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """Tensor i of n elements: s[k] = sin(0.37 k + 1.3 i); 1-D '*weight' -> 1 + 0.1 s, else 0.05 s."""
    state = {}
    for i, (key, shape) in enumerate(expected_shapes()[arch].items()):
        s = np.sin(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64) + 1.3 * i).reshape(shape)
        value = 1 + 0.1 * s if len(shape) == 1 and key.endswith("weight") else 0.05 * s
        state[key] = torch.from_numpy(value.astype(np.float32))
    return state


def golden(arch: str) -> dict[str, np.ndarray]:
    return dict(np.load(DATA / f"{arch}_probe.npz"))
