"""The commands of `mobilegen`: sample, train, distill, prune, demo-data (serving: cli/serve.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mobilegen.cli.core import (
    AnyFinite,
    FiniteFloat,
    arch_option,
    config_from,
    device_option,
    guidance_option,
    max_tensor_option,
    options,
    overwrite_option,
    rank0,
    sampler_option,
    seed_option,
    steps_option,
    teacher_summary,
    training_bars,
)
from mobilegen.contract.defaults import TARGET_NAMES

RUN_FOLDER = click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Run folder.")


def register(cli: click.Group) -> None:
    for command in (
        sample_command,
        train_command,
        distill_command,
        prune_command,
        demo_data_command,
    ):
        cli.add_command(command)


@click.command("sample")
@click.argument("model_path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--label", default="cat", show_default=True, help="Class name, index, alias ('auto') or 'none'.")
@click.option("--n", "n", type=click.IntRange(1, 64), default=1, show_default=True, help="Images (a grid when > 1).")
@seed_option()
@steps_option(help_text="DDIM steps (DDPM runs 999).")
@sampler_option()
@guidance_option("0 turns guidance off.")
@click.option("--eta", type=FiniteFloat(0, 1), default=0.0, show_default=True, help="DDIM noise (0 = deterministic).")
@device_option()
@max_tensor_option("Checkpoints: attention in chunks so that no tensor exceeds this [unbounded].")
@arch_option()
@click.option(
    "--target",
    type=click.Choice(TARGET_NAMES),
    help="Run a .tflite file on a phone path: LiteRT's GPU accelerator on lavapipe (gpu-fp16 is a phone's default "
    "precision) or ARM64 LiteRT under qemu. For numerics and op coverage; its times say nothing about a phone.",
)
@overwrite_option("Replace an existing --out file (never the input).")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("sample.png"),
    show_default=True,
    help="Image file: .png, .jpg/.jpeg or .webp (the extension names the format).",
)
def sample_command(
    model_path, label, n, seed, steps, sampler, guidance, eta, device, max_tensor_mb, arch, target, overwrite, out
) -> None:
    """Generate images from a checkpoint, an ONNX or a TFLite artifact (default: untrained v2)."""
    from tqdm import tqdm

    from mobilegen.diffusion import SamplerConfig
    from mobilegen.runtime.generate import prepare

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=seed)
    generation = prepare(model_path, label, n, config, device, arch, out, overwrite, max_tensor_mb, target)
    total = generation.steps
    with tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, leave=False) as bar:
        result = generation.run(on_step=lambda *_: bar.update())
    click.echo(f"model: {result.model}", err=True)
    click.echo(
        f"{result.backend}: {result.label_name} x{n}, {config.sampler} {total} steps, guidance {guidance:g}, "
        f"seed {seed}: {result.seconds:.2f} s total, {result.seconds / n:.2f} s/image, "
        f"{1000 * result.seconds / total:.1f} ms/step -> {out}"
        + (" (times on lavapipe or qemu: not a phone's speed)" if target else "")
    )


DATA_HELP = "CIFAR-10 layout folder: DATA/train/<class>/*.png (+ DATA/test/ for validation)"
train_options = options(
    click.option(
        "--data",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        help=f"{DATA_HELP}. distill without it learns from the teacher's own sampling trajectories.",
    ),
    RUN_FOLDER,
    click.option(
        "--init",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Start from this checkpoint's weights and widths (one of --arch; a structurally pruned one included: "
        "`mobilegen prune --steps 0`) instead of a seeded init.",
    ),
    click.option("--epochs", type=click.IntRange(1), default=100, show_default=True),
    click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True),
    click.option("--lr", type=FiniteFloat(0, min_open=True), default=3e-4, show_default=True, help="One-cycle peak LR (AdamW)."),
    click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop at this global step (schedule unchanged)."),
    click.option(
        "--qat-every",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="fp16 QAT: round weights to float16 every K steps (0 = off).",
    ),
    click.option("--label-dropout", type=FiniteFloat(0, 1, max_open=True), default=0.1, show_default=True),
    click.option("--ema-beta", type=FiniteFloat(0, 1), default=0.995, show_default=True),
    click.option(
        "--ema-start", type=click.IntRange(0), default=2000, show_default=True, help="EMA copies the weights until this step."
    ),
    seed_option(),
    click.option("--sample-every", type=click.IntRange(0), default=0, help="Save a DDIM sample grid every N steps (0 = off)."),
    click.option(
        "--val-every",
        type=click.IntRange(0),
        default=0,
        help="Validation eps-MSE every N steps (0 = at the end); data-free: fidelity to the teacher every N steps "
        "and at the end (0 = never).",
    ),
    click.option("--checkpoint-every", type=click.IntRange(0), default=500, show_default=True),
    device_option(),
    click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader worker processes."),
    click.option(
        "--on-bad-image",
        type=click.Choice(["skip", "stop"]),
        default="skip",
        show_default=True,
        help="Unreadable images: skip and count them, or stop.",
    ),
    click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped."),
    overwrite_option("Start over in an --out that holds a run (replaces last.pt, ema.pt)."),
)


teacher_data_options = options(
    click.option(
        "--data-fraction",
        type=FiniteFloat(0, 1, max_open=True),
        default=None,
        help="With --data: mix this share of real images into the teacher's trajectories [real images alone].",
    ),
    click.option(
        "--x0-weight",
        type=FiniteFloat(0),
        default=0.0,
        show_default=True,
        help="Data-free: weight of MSE(x0 of the student, x0 of the teacher), which stresses large t.",
    ),
    click.option(
        "--forward-fraction",
        type=FiniteFloat(0, 1),
        default=0.25,
        show_default=True,
        help="Data-free: share of items that are the teacher's final samples through the forward process at a random t.",
    ),
    click.option(
        "--teacher-steps",
        type=click.IntRange(1, 999),
        multiple=True,
        default=(10, 20, 50),
        show_default=True,
        help="Data-free: the teacher's DDIM runs, one per step count (repeat the option).",
    ),
    click.option(
        "--teacher-guidance",
        type=FiniteFloat(0, 50),
        multiple=True,
        default=(0.0, 3.0),
        show_default=True,
        help="Data-free: guidance scales of the teacher's runs (0 = unguided, with the unconditional label).",
    ),
    click.option(
        "--teacher-seeds",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Data-free: seeds of the teacher's runs (cached in OUT/teacher/).",
    ),
)


def validation_text(result, data_free: bool) -> str:
    if data_free:
        fidelity = [
            f"step {k}: eps-MSE {result.val_losses[k]:.5f}, PSNR min {lo:.1f} / mean {mean:.1f} dB"
            for k, (lo, mean) in result.val_psnr.items()
        ]
        return "fidelity to the teacher (77 parity cases) " + (", ".join(fidelity) or "not measured (--val-every N)")
    return "validation eps-MSE " + (", ".join(f"step {k}: {v:.4f}" for k, v in result.val_losses.items()) or "no test/ split")


def last_loss(result) -> float:
    return result.losses[-1] if result.losses else float("nan")  # a resumed run that was already done


def run_training(values: dict) -> None:
    from mobilegen.train import TrainConfig, train

    config = config_from(TrainConfig, values, {"workers": "num_workers"})
    interrupted = f"interrupted; the last finished step is saved in {config.out}/last.pt: continue with --resume"
    with training_bars(f"{'distill' if config.teacher else 'train'} {config.arch}", interrupted) as (bar, runs):
        result = train(config, bar, runs)
    if not rank0():
        return
    skipped = f", {result.skipped_images} unreadable images skipped" if result.skipped_images else ""
    if line := teacher_summary(result.teacher_runs, result.teacher_inputs, config.out):
        click.echo(line)
    click.echo(
        f"{config.arch}: step {result.step}, last loss {last_loss(result):.4f}, "
        f"{validation_text(result, config.from_teacher)}, {result.images_per_second:.1f} images/s{skipped}"
    )
    click.echo(
        f"wrote {config.out}/ema.pt (export it with: mobilegen-export tflite {config.out}/ema.pt --fp16) and {config.out}/last.pt"
    )


@click.command("train")
@arch_option("Architecture to train.", default="teacher")
@train_options
def train_command(**values) -> None:
    """Train a UNet from scratch on a CIFAR-10-layout image folder."""
    run_training(values)


@click.command("distill")
@click.option(
    "--teacher", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True, help="Teacher checkpoint."
)
@arch_option("Student architecture.", default="student_v2")
@click.option(
    "--noise-weight", type=FiniteFloat(0), default=None, help="Weight of MSE(noise, student) [1 with --data alone; 0 data-free]."
)
@click.option("--teacher-weight", type=FiniteFloat(0), default=1.0, show_default=True, help="Weight of MSE(teacher, student).")
@train_options
@teacher_data_options
def distill_command(**values) -> None:
    """Distil a teacher checkpoint into a student: loss = w_n MSE(noise, s) + w_t MSE(teacher, s).

    Without --data, data-free: the inputs are the teacher's own DDIM trajectories (cached in OUT/teacher/)
    and its final samples through the forward process (docs/training.md).
    """
    run_training(values)


@click.command("prune")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--ratio",
    type=AnyFinite(),
    default=0.0,
    show_default=True,
    help="Fraction of the channels of every prunable group to remove, in [0, 1).",
)
@click.option(
    "--head-ratio",
    type=AnyFinite(),
    default=0.0,
    show_default=True,
    help="Fraction of every attention block's heads to remove, in [0, 1): inside the attention (the block keeps its width).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    help=f"{DATA_HELP} for the fine-tune [none: data-free, from CHECKPOINT's own sampling trajectories].",
)
@click.option(
    "--head-importance",
    type=click.Choice(["ablation", "magnitude"]),
    default=None,
    help="Which heads go: the least useful on the trajectories (ablation) or the smallest weights (magnitude) "
    "[ablation data-free, magnitude with --data alone].",
)
@click.option(
    "--importance-samples",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Trajectory inputs the head ablation runs on.",
)
@steps_option(200, "Fine-tune steps (0: prune only).", low=0)
@RUN_FOLDER
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=1e-4, show_default=True, help="One-cycle peak LR (AdamW).")
@click.option("--noise-weight", type=FiniteFloat(0), default=0.0, show_default=True, help="Weight of MSE(noise, pruned).")
@click.option(
    "--teacher-weight",
    type=FiniteFloat(0),
    default=1.0,
    show_default=True,
    help="Weight of MSE(unpruned, pruned): distillation from CHECKPOINT.",
)
@seed_option()
@click.option(
    "--val-every",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Data-free: fidelity to CHECKPOINT on the 77 parity cases every N steps and at the end (0 = never).",
)
@click.option("--checkpoint-every", type=click.IntRange(0), default=500, show_default=True)
@device_option()
@teacher_data_options
@click.option("--resume", is_flag=True, help="Continue the run in --out (trajectories, pruning, fine-tune) where it stopped.")
@overwrite_option("Replace pruned.pt, last.pt, ema.pt and another teacher's OUT/teacher/ in --out (never CHECKPOINT).")
def prune_command(checkpoint, **values) -> None:
    """Structured pruning of CHECKPOINT (whole channels and heads), then a distillation fine-tune from it.

    Without --data the fine-tune is data-free: it learns from CHECKPOINT's own sampling trajectories
    (cached in OUT/teacher/), the default way to compress a checkpoint you did not train (docs/pruning.md).
    """
    from mobilegen.train import TrainConfig
    from mobilegen.train.prune import PruneConfig, prune_and_distill

    config = config_from(TrainConfig, values, teacher=checkpoint)
    out = config.out
    interrupted = f"interrupted; what was finished is in {out} (teacher/, pruned.pt, last.pt): continue with --resume"
    with training_bars("fine-tune pruned", interrupted) as (bar, runs):
        result = prune_and_distill(config_from(PruneConfig, values, checkpoint=checkpoint), config, bar, runs)
    if not rank0():
        return
    (p0, p1), (m0, m1), (h0, h1) = result.params, result.macs, result.heads
    click.echo(
        f"params {p0:,} -> {p1:,} ({p0 / p1:.2f}x fewer); MACs per step {m0 / 1e9:.3f} G -> {m1 / 1e9:.3f} G "
        f"({m0 / m1:.2f}x fewer); attention heads {h0} -> {h1}"
    )
    for name, r in result.rankings.items():
        removed = ", ".join(f"{block} {heads}" for block, heads in r["heads_removed"].items())
        error = (
            f"; before the fine-tune, eps PSNR vs CHECKPOINT on the 77 parity cases min {r['psnr_min']:.1f} / "
            f"mean {r['psnr_mean']:.1f} dB"
            if "psnr_min" in r
            else ""
        )
        click.echo(f"heads by {name}{' (chosen)' if name == result.head_importance else ''}: removed {removed}{error}")
    if line := teacher_summary(result.teacher_runs, result.train.teacher_inputs if result.train else 0, out):
        click.echo(line)
    if result.train is None:
        click.echo(f"wrote {result.pruned} (not fine-tuned; export it with: mobilegen-export tflite {result.pruned})")
        return
    click.echo(
        f"fine-tuned {result.train.step} steps, last loss {last_loss(result.train):.4f}, "
        f"{validation_text(result.train, config.from_teacher)}"
    )
    click.echo(
        f"wrote {result.pruned}, {out}/last.pt and {out}/ema.pt (export it with: mobilegen-export tflite {out}/ema.pt --fp16)"
    )


@click.command("demo-data")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--per-class", type=click.IntRange(1, 10000), default=20, show_default=True)
@seed_option()
@overwrite_option("Replace an OUT that demo-data wrote (anything else is refused).")
def demo_data_command(out, per_class, seed, overwrite) -> None:
    """Write a small CIFAR-10-layout folder of coloured shapes (for trying train/distill)."""
    from mobilegen.train import write_demo_data

    write_demo_data(out, per_class, seed, overwrite)
    click.echo(f"wrote {out}/train and {out}/test with the ten CIFAR-10 class folders")
