"""Fidelity against distillation budget: prune a checkpoint, distil it data-free for a
wall-clock budget, and measure it against the unpruned fp32 model as the budget is spent.

    .venv/bin/python docs/measurements/fidelity-cpu/fidelity_budget.py CKPT --head-ratio 0.5 --minutes 15 --eval-every-minutes 5 -o OUT

The teacher's trajectories are generated (or read) into OUT/teacher/ first and the heads are
chosen and pruned (`mobilegen prune CKPT --steps 0`, the library call); neither counts
against the budget, and both are timed. Three timed steps give the step time, so the
one-cycle LR schedule spans the budget; the fine-tune then runs in segments, one per
evaluation point, each continued by --resume (which continues exactly). At 0 minutes
(pruned, not fine-tuned) and after every --eval-every-minutes of distillation (the
wall clock of the training calls alone; the evaluation pauses it), OUT/ema.pt is measured:
  - eps PSNR per step on the 77 parity cases (min / mean),
  - DDIM (--eval-steps, default 50) guided (guidance 3) trajectories of 4 classes x 2 seeds:
    final-image PSNR / SSIM against the unpruned model's (min / mean),
and for the last point, per timestep (min over the images): the PSNR of the student's
guided eps against the teacher's on the teacher's own states (the error that enters at
that step) and of the student's state against the teacher's (the error carried so far). An intermediate point is the middle of one schedule, not
a shorter budget of its own. Writes OUT/fidelity.json and prints a table with the machine
and the command.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.diffusion import SamplerConfig, guided, linear_schedule, seeded_noise
from mobilegen.files import write_json
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.train import TrainConfig, Trainer, train
from mobilegen.train.data import steps_per_epoch
from mobilegen.train.loop import step_generator
from mobilegen.train.prune import PRUNED, PruneConfig, prune_and_distill
from mobilegen.train.teacher_data import FOLDER, Fidelity, draw_batch, planned_runs, teacher_pool
from mobilegen.verify.parity import psnr
from mobilegen.verify.timing import machine, machine_line
from mobilegen.verify.trajectory import compare_runs, record

GATE = (30.0, 0.95)  # the fp16 trajectory gate (verify/trajectory.py), the acceptance
BAR = (20.0, 0.8)  # the intermediate bar


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="the unpruned checkpoint (the teacher)")
    ap.add_argument("--head-ratio", type=float, default=0.5)
    ap.add_argument("--ratio", type=float, default=0.0, help="channel pruning ratio")
    ap.add_argument("--head-importance", choices=["ablation", "magnitude"], default=None, help="[ablation]")
    ap.add_argument("--importance-samples", type=int, default=32)
    ap.add_argument("--minutes", type=float, required=True, help="distillation budget (wall clock of the training)")
    ap.add_argument("--eval-every-minutes", type=float, required=True)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--x0-weight", type=float, default=0.0)
    ap.add_argument("--ema-start", type=int, default=0,
                    help="EMA copies the weights until this step, then averages [0: from the start, for a fine-tune]")
    ap.add_argument("--teacher-steps", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--teacher-seeds", type=int, default=1)
    ap.add_argument("--eval-steps", type=int, default=50, help="DDIM steps of the evaluated trajectories")
    ap.add_argument("--classes", nargs="+", default=["airplane", "cat", "ship", "truck"])
    ap.add_argument("--seeds", type=int, default=2, help="evaluated trajectories per class: seeds --eval-seed.. --eval-seed+N-1")
    ap.add_argument("--eval-seed", type=int, default=1000,
                    help="first seed of the evaluated trajectories; must not be a teacher-run seed (0..--teacher-seeds-1), "
                         "whose states the student trains on [1000]")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch's default]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds a run (the teacher cache is kept)")
    return ap.parse_args()


class Evaluation:
    """The unpruned model's references, computed once; __call__ measures a student against them."""

    def __init__(self, teacher: torch.nn.Module, classes: list[int], seeds: range, steps: int) -> None:
        self.teacher, self.classes, self.seeds = teacher, classes, seeds
        self.configs = [SamplerConfig(steps=steps, guidance=3.0, seed=s) for s in self.seeds]
        self.fidelity = Fidelity(teacher)
        with torch.no_grad():
            self.references = [record(teacher, classes, linear_schedule(), c) for c in self.configs]
            self.teacher_eps = [self.step_eps(teacher, i) for i in range(len(self.configs))]

    def step_inputs(self, i: int) -> list[torch.Tensor]:
        """The states the teacher's run i fed its denoiser: the initial noise, then each state after a step."""
        noise = seeded_noise(self.configs[i].seed)((len(self.classes), 3, 64, 64))
        return [noise, *(torch.from_numpy(x) for x in self.references[i].states[:-1])]

    def step_eps(self, model: torch.nn.Module, i: int) -> list[np.ndarray]:
        """The model's guided eps (guidance 3) at every state of the teacher's run i."""
        step, y = guided(model, 3.0), torch.tensor(self.classes, dtype=torch.int32)
        return [step(x, torch.full((len(y),), float(t)), y).numpy() for x, t in zip(self.step_inputs(i), self.references[i].timesteps)]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, per_step_eps: bool = False) -> dict:
        model = model.eval()
        names = [f"{CIFAR10_LABELS[c]}/seed{s}" for s in self.seeds for c in self.classes]
        images, per_step = {}, []
        for seed, config, reference in zip(self.seeds, self.configs, self.references):
            run = record(model, self.classes, linear_schedule(), config)
            result = compare_runs("student", reference, run, [CIFAR10_LABELS[c] for c in self.classes], GATE)
            images |= {f"{label}/seed{seed}": v for label, v in result.per_class.items()}
            per_step.append(per_image_states(reference, run))
        psnrs, ssims = [images[n]["psnr"] for n in names], [images[n]["ssim"] for n in names]
        timesteps = self.references[0].timesteps
        states = np.min(np.concatenate(per_step, axis=1), axis=1)  # per t, the worst image
        entering = [None] * len(timesteps)
        if per_step_eps:
            student = [self.step_eps(model, i) for i in range(len(self.configs))]
            entering = [min(psnr(ref[k][j], out[k][j]) for ref, out in zip(self.teacher_eps, student) for j in range(len(self.classes)))
                        for k in range(len(timesteps))]  # fmt: skip
        return {
            "parity": self.fidelity(model),
            "trajectory": {"psnr_min": round(min(psnrs), 2), "psnr_mean": round(float(np.mean(psnrs)), 2),
                           "ssim_min": round(min(ssims), 4), "ssim_mean": round(float(np.mean(ssims)), 4), "images": images},
            "per_timestep": [{"t": t, "eps_psnr_min": None if e is None else round(e, 2), "state_psnr_min": round(float(p), 2)}
                             for t, e, p in zip(timesteps, entering, states)],
        }  # fmt: skip


def per_image_states(reference, run) -> np.ndarray:
    """[steps, images] PSNR of each image's state x_t against the reference's (peak: the reference's max |x|)."""
    out = np.empty((len(reference.states), reference.states[0].shape[0]))
    for k, (a, b) in enumerate(zip(reference.states, run.states)):
        for i in range(a.shape[0]):
            mse = float(np.mean((a[i].astype(np.float64) - b[i]) ** 2))
            out[k, i] = 999.0 if mse == 0 else 10 * math.log10(float(np.abs(a[i]).max()) ** 2 / mse)
    return out


def step_seconds(config: TrainConfig, pool, device: torch.device, steps: int = 3) -> float:
    """The median time of one distillation step (after one warm-up), on a throwaway trainer."""
    trainer = Trainer(config, total_steps=steps + 1, device=device)
    times = []
    for k in range(steps + 1):
        batch = draw_batch(pool, step_generator(config.seed, k), config.batch_size, 0.0, config.forward_fraction, config.label_dropout)
        start = time.perf_counter()
        trainer.distill_step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    args = parse()
    eval_seeds = range(args.eval_seed, args.eval_seed + args.seeds)
    if set(eval_seeds) & set(range(args.teacher_seeds)):
        sys.exit(f"error: evaluation seeds {list(eval_seeds)} overlap the teacher runs' seeds 0..{args.teacher_seeds - 1}: "
                 "the student would be measured on trajectories it trained on; choose another --eval-seed")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    out, device = args.out, torch.device(args.device)
    classes = [CIFAR10_LABELS.index(c) for c in args.classes]
    config = TrainConfig(out=out, teacher=args.checkpoint, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.device, x0_weight=args.x0_weight, teacher_steps=tuple(args.teacher_steps),
                         teacher_seeds=args.teacher_seeds, ema_start=args.ema_start, checkpoint_every=0, overwrite=args.overwrite)  # fmt: skip
    teacher = load_checkpoint(args.checkpoint)
    start = time.perf_counter()
    runs = planned_runs(config.teacher_steps, config.teacher_guidance, config.teacher_seeds)
    pool = teacher_pool(teacher.model.to(device), teacher.sha256, str(args.checkpoint), out / FOLDER, runs, device, args.overwrite,
                        (args.checkpoint,))  # fmt: skip
    teacher.model.cpu()  # the references are the unpruned fp32 model on the CPU
    generation_s = time.perf_counter() - start
    print(f"teacher trajectories: {len(pool)} inputs, {len(pool.generated)} runs generated, {len(pool.reused)} read ({generation_s:.0f} s)")
    start = time.perf_counter()
    pruning = prune_and_distill(PruneConfig(args.checkpoint, args.ratio, args.head_ratio, 0, args.head_importance,
                                            args.importance_samples), config)  # fmt: skip
    prune_s = time.perf_counter() - start
    pruned = load_checkpoint(out / PRUNED).model
    fine = replace(config, arch=pruned.arch, init=out / PRUNED, teacher=args.checkpoint)
    step_s = step_seconds(fine, pool, device)
    total = max(1, int(args.minutes * 60 / step_s))
    points = sorted({min(total, max(1, round(i * args.eval_every_minutes * 60 / step_s)))
                     for i in range(1, math.ceil(args.minutes / args.eval_every_minutes) + 1)} | {total})  # fmt: skip
    fine = replace(fine, epochs=math.ceil(total / steps_per_epoch(len(pool), args.batch_size)))
    print(f"pruned in {prune_s:.0f} s ({pruning.heads[0]} -> {pruning.heads[1]} heads, by {pruning.head_importance}); "
          f"{step_s:.2f} s/step -> {total} steps in {args.minutes:g} min, evaluated at steps {points}")  # fmt: skip
    evaluate = Evaluation(teacher.model, classes, eval_seeds, args.eval_steps)
    rows = [{"step": 0, "train_s": 0.0, "busy_s": 0.0, **evaluate(pruned)}]
    train_s = busy_s = 0.0
    for i, step in enumerate(points):
        start = time.perf_counter()
        result = train(replace(fine, max_steps=step, resume=i > 0, overwrite=args.overwrite and i == 0))
        train_s += time.perf_counter() - start
        busy_s += (step - rows[-1]["step"]) * args.batch_size / result.images_per_second
        last = i == len(points) - 1
        rows.append({"step": step, "train_s": round(train_s, 1), "busy_s": round(busy_s, 1), "last_loss": result.losses[-1],
                     **evaluate(load_checkpoint(out / "ema.pt").model, per_step_eps=last)})  # fmt: skip
        print(table_row(rows[-1]), flush=True)
    m = machine()
    report = {
        "command": command, "machine": m, "commit": m["commit"], "threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "gate": {"psnr_db": GATE[0], "ssim": GATE[1]}, "bar": {"psnr_db": BAR[0], "ssim": BAR[1]},
        "teacher_inputs": len(pool), "teacher_generation_s": round(generation_s, 1), "prune_s": round(prune_s, 1),
        "head_rankings": pruning.rankings, "head_importance": pruning.head_importance,
        "step_s": round(step_s, 3), "planned_steps": total, "points": rows,
    }  # fmt: skip
    write_json(out / "fidelity.json", report)
    print(render(report))


def table_row(r: dict) -> str:
    p, t = r["parity"], r["trajectory"]
    return (f"| {r['train_s'] / 60:.1f} | {r['step']} | {p['psnr_min']:.1f} / {p['psnr_mean']:.1f} "
            f"| {t['psnr_min']:.1f} / {t['psnr_mean']:.1f} | {t['ssim_min']:.3f} / {t['ssim_mean']:.3f} |")


def render(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"Machine: {machine_line(report['machine'])}; {report['threads']} threads.",
        f"Command: {report['command']}",
        (f"Teacher: {s['checkpoint']}; {report['teacher_inputs']} trajectory inputs ({report['teacher_generation_s']:.0f} s); "
         f"heads by {report['head_importance']}; {report['step_s']:.2f} s per step at batch {s['batch_size']}."),
        "Trajectories: DDIM-{} guided (3), classes {}, seeds {}..{}; against the unpruned fp32 model. Gate {} dB / SSIM {}.".format(
            s["eval_steps"], ", ".join(s["classes"]), s.get("eval_seed", 0), s.get("eval_seed", 0) + s["seeds"] - 1, report["gate"]["psnr_db"], report["gate"]["ssim"]),
        "",
        "| distillation minutes | steps | parity PSNR min / mean dB | trajectory PSNR min / mean dB | SSIM min / mean |",
        "|---:|---:|---:|---:|---:|",
        *[table_row(r) for r in report["points"]],
        "",
        "Where the error enters (last point, worst image per timestep: eps PSNR on the teacher's states / state PSNR, dB):",
        "  " + ", ".join(f"t={p['t']}: {p['eps_psnr_min']:.1f} / {p['state_psnr_min']:.1f}" for p in report["points"][-1]["per_timestep"]),
    ]  # fmt: skip
    for name, r in report["head_rankings"].items():
        if "psnr_min" in r:
            lines.append(f"Heads by {name}: before the fine-tune, parity PSNR min {r['psnr_min']:.1f} / mean {r['psnr_mean']:.1f} dB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
