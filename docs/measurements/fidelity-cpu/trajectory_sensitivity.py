"""How much a student's per-step error must shrink before its guided trajectories stay on
the unpruned model's: the student's error, scaled.

    .venv/bin/python docs/measurements/fidelity-cpu/trajectory_sensitivity.py CKPT STUDENT --alphas 1 0.3 0.1 0.03 0.01 -o OUT.json

For each alpha, the denoiser eps_T + alpha (eps_S - eps_T) (eps_T: CKPT, the unpruned model;
eps_S: STUDENT, e.g. a head-pruned student) has the student's error, in its own direction,
alpha times as large: its per-step PSNR is the student's + 20 log10(1/alpha) dB. It is then
measured as fidelity_budget.py measures a student: eps PSNR on the 77 parity cases
(min / mean) and DDIM-50 guided (guidance 3) trajectories of 4 classes x 2 seeds, final-image
PSNR / SSIM against the unpruned model's. The table says what per-step fidelity a student
with this kind of error needs to pass a trajectory bar: the per-step PSNR min at which the
trajectory PSNR min reaches the bar (20 dB) and the gate (30 dB), interpolated linearly
between the measured alphas (extrapolated from the last two beyond them), and the same for
the per-step PSNR mean.

With --budget FIDELITY_JSON (what fidelity_budget.py wrote for STUDENT's fine-tune)
it also extrapolates the budget: a line through the distillation points' per-step PSNR min
(and, apart, mean) against log10(steps), and the steps (and hours, at that run's seconds per
step) at which it reaches those per-step levels. --rows reuses an earlier run's measured
rows. Writes OUT.json with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fidelity_budget import BAR, GATE, Evaluation
from torch import nn

from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.files import write_json
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.verify.timing import machine, machine_line


class ScaledError(nn.Module):
    """eps_T + alpha (eps_S - eps_T)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, alpha: float) -> None:
        super().__init__()
        self.teacher, self.student, self.alpha = teacher, student, alpha

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = self.teacher(x, t, y)
        return eps + self.alpha * (self.student(x, t, y) - eps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="the unpruned model")
    ap.add_argument("student", type=Path, help="the student whose error is scaled")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03, 0.01])
    ap.add_argument("--classes", nargs="+", default=["airplane", "cat", "ship", "truck"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=Path, default=None,
                    help="an earlier OUT.json of this script: reuse its measured rows (nothing is run again), for --budget")
    ap.add_argument("--budget", type=Path, default=None, help="fidelity.json of STUDENT's fine-tune, to extrapolate the budget")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the JSON file to write (refused if it exists)")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} already exists; choose another -o")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = json.loads(args.rows.read_text())["rows"] if args.rows else measure(args)
    # Which per-step level gives a trajectory PSNR min at the bar and at the gate, by the per-step min and mean.
    needed = {stat: {name: round(needed_step_psnr([(r["parity"][f"psnr_{stat}"], r["trajectory"]["psnr_min"]) for r in rows], level[0]), 1)
                     for name, level in (("bar", BAR), ("gate", GATE))} for stat in ("min", "mean")}  # fmt: skip
    for stat, levels in needed.items():
        print(f"per-step PSNR {stat} needed for a trajectory PSNR min of {BAR[0]:g} dB: {levels['bar']} dB; of {GATE[0]:g} dB: {levels['gate']} dB")
    report = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "threads": torch.get_num_threads(),
              "gate": GATE, "bar": BAR, "rows": rows, "needed_step_psnr": needed}  # fmt: skip
    if args.budget is not None:
        budget = json.loads(args.budget.read_text())
        report["budget"] = {stat: extrapolate(budget, levels, stat) for stat, levels in needed.items()}
        for stat, fit in report["budget"].items():
            for name, b in fit["targets"].items():
                print(f"{name}: per-step PSNR {stat} {b['step_psnr']} dB at ~{b['steps']:.3g} steps, ~{b['minutes'] / 60:.3g} h "
                      f"(fit: {fit['fit']})")  # fmt: skip
    report["commit"] = report["machine"]["commit"]
    write_json(args.out, report)
    print(f"Machine: {machine_line(report['machine'])}; {torch.get_num_threads()} threads. Wrote {args.out}")


def measure(args: argparse.Namespace) -> list[dict]:
    teacher = load_checkpoint(args.checkpoint).model.float().eval()
    student = load_checkpoint(args.student).model.float().eval()
    classes = [CIFAR10_LABELS.index(c) for c in args.classes]
    evaluate = Evaluation(teacher, classes, range(args.eval_seed, args.eval_seed + args.seeds), args.eval_steps)
    rows = []
    for alpha in args.alphas:
        start = time.perf_counter()
        r = evaluate(ScaledError(teacher, student, alpha))
        p, tr = r["parity"], r["trajectory"]
        rows.append({"alpha": alpha, "parity": p, "trajectory": tr, "seconds": round(time.perf_counter() - start, 1)})
        print(f"| {alpha:g} | {p['psnr_min']:.1f} / {p['psnr_mean']:.1f} | {tr['psnr_min']:.1f} / {tr['psnr_mean']:.1f} "
              f"| {tr['ssim_min']:.3f} / {tr['ssim_mean']:.3f} |", flush=True)  # fmt: skip
    return rows


def needed_step_psnr(pairs: list[tuple[float, float]], target: float) -> float:
    """The per-step PSNR at which the trajectory PSNR reaches target: linear between the two measured
    points around it, else on the line through the two nearest (pairs: (per-step, trajectory))."""
    pts = sorted(pairs, key=lambda p: p[1])
    if len(pts) < 2:
        raise SystemExit("error: --alphas needs at least two values to interpolate")
    below = [p for p in pts if p[1] <= target]
    above = [p for p in pts if p[1] > target]
    a, b = (below[-1], above[0]) if below and above else ((pts[-2], pts[-1]) if not above else (pts[0], pts[1]))
    if b[1] == a[1]:
        return b[0]
    return a[0] + (target - a[1]) * (b[0] - a[0]) / (b[1] - a[1])


def extrapolate(budget: dict, needed: dict[str, float], stat: str) -> dict:
    """Fit step PSNR <stat> = c + k log10(steps) through the fine-tune's points (steps > 0), solved for each level."""
    pts = [(math.log10(p["step"]), p["parity"][f"psnr_{stat}"]) for p in budget["points"] if p["step"] > 0]
    if len(pts) < 2:
        raise SystemExit("error: --budget needs at least two distillation points after step 0")
    k, c = np.polyfit(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), 1)
    out = {"fit": f"{c:.2f} + {k:.2f} log10(steps) dB", "points": len(pts), "step_s": budget["step_s"], "targets": {}}
    for name, level in needed.items():
        steps = float(10 ** ((level - c) / k)) if k > 0 else math.inf  # no improvement: never
        out["targets"][name] = {"step_psnr": level, "steps": steps, "minutes": steps * budget["step_s"] / 60}
    return out


if __name__ == "__main__":
    main()
