"""Where does int8 error come from? Round only the weights of one layer group to int8
(symmetric, per-tensor or per-output-channel) in PyTorch and report the min PSNR of eps
against the fp32 model on a small parity set (4 timesteps x 3 labels).

    .venv/bin/python docs/measurements/int8-cpu/int8_weight_sensitivity.py ../shared/models/mobilegen_v2_student.pt

A diagnostic, not a test: if weights alone stay far above the gate, the loss in a
dynamic-range file comes from its on-the-fly activation quantization.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.models.checkpoint import load_or_default
from mobilegen.verify.parity import psnr

GROUPS = {
    "all": lambda name, m: True,
    "conv": lambda name, m: isinstance(m, nn.Conv2d),
    "time-embedding linears": lambda name, m: "emb_layer" in name,
    "attention projections": lambda name, m: name.endswith(".mha") or ".mha." in name,
    "feed-forward": lambda name, m: "ff_self" in name,
    "output conv": lambda name, m: name == "outc",
}


def quantize(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    dims = tuple(range(1, w.dim())) if per_channel else tuple(range(w.dim()))
    scale = (w.abs().amax(dim=dims, keepdim=True) / 127).clamp(min=1e-12)
    return (w / scale).round().clamp(-127, 127) * scale


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, nargs="?", help="checkpoint [the untrained default v2]")
    base = load_or_default(ap.parse_args().checkpoint).model
    cases = forward_process_cases(linear_schedule(), timesteps=(1, 100, 750, 999), labels=(0, 5, -1))
    x, t, y = (torch.from_numpy(a) for a in (cases.x, cases.t, cases.y))
    ref = base(x, t, y).numpy()
    print(f"{'weights rounded to int8':<24} {'per-tensor dB':>14} {'per-channel dB':>15}")
    for group, select in GROUPS.items():
        row = []
        for per_channel in (False, True):
            model = copy.deepcopy(base)
            for name, module in model.named_modules():
                if not select(name, module):
                    continue
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.weight.copy_(quantize(module.weight, per_channel))
                elif isinstance(module, nn.MultiheadAttention):
                    module.in_proj_weight.copy_(quantize(module.in_proj_weight, per_channel))
            out = model(x, t, y).numpy()
            row.append(min(psnr(ref[i], out[i]) for i in range(len(out))))
        print(f"{group:<24} {row[0]:>14.1f} {row[1]:>15.1f}")


if __name__ == "__main__":
    main()
