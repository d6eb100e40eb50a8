"""Command-line shells: parse options, call one library function, map the result to an exit code.

Heavy libraries (torch, onnx, onnx2tf, LiteRT) are imported inside the commands so
that ``--help`` is instant.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import click


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and +-Inf (click's FloatRange lets NaN through every bound)."""

    name = "finite float"

    def __init__(self, *args, allow_inf: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allow_inf = allow_inf  # +inf as "no limit" (--max-tensor-mb inf); NaN never

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if math.isnan(number) or (math.isinf(number) and not (self.allow_inf and number > 0)):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


ARCH_CHOICES = click.Choice(["teacher", "student_v1", "student_v2"])
CHECKPOINT = click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))


def fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Domain errors become one clear line and a non-zero exit code, never a traceback.
    SIGTERM is handled like Ctrl-C: clean-up runs, then exit 130 with one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mobilegen.errors import MobileGenError
        from mobilegen.outputs import sigterm_as_interrupt

        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            fail(f"interrupted ({exc.args[0] if exc.args else 'Ctrl-C'}); stopped and cleaned up: "
                 "outputs are only ever published whole", 130)  # fmt: skip
        except MobileGenError as exc:
            fail(str(exc), exc.exit_code)
        except ValueError as exc:
            fail(str(exc), 2)
        except OSError as exc:  # full disk, permissions: nothing was published
            fail(f"{exc.strerror or exc} ({exc.filename or ''}); no output was published", 2)

    return wrapper


def load_model(checkpoint: Path | None, arch: str | None):
    from mobilegen.checkpoint import load_or_default

    loaded = load_or_default(checkpoint, arch)
    click.echo(f"model: {loaded.arch} from {loaded.source}", err=True)
    return loaded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export_cli() -> None:
    """mobilegen-export: checkpoints -> verified ONNX and TFLite denoisers (x, t, y) -> eps."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main_cli() -> None:
    """mobilegen: sample images from MobileGen models (train, distill and serve: see README)."""


def _export(checkpoint, arch, out, overwrite, batch, threads, **kw) -> None:
    from mobilegen.exporter.memory import limit_text
    from mobilegen.exporter.pipeline import ExportOptions, check_output_dir, export_artifacts

    check_output_dir(out, overwrite, checkpoint)  # before any work
    loaded = load_model(checkpoint, arch)
    start = time.perf_counter()
    result = export_artifacts(loaded, ExportOptions(out_dir=out, overwrite=overwrite, batch=batch, threads=threads, **kw))
    for name, parity in result.parity.items():
        click.echo(parity.summary())
    for name, entry in result.manifest["files"].items():
        if "memory" in entry:
            m = entry["memory"]
            click.echo(f"{name}: peak RSS {m['peak_rss_mb']:.1f} MB ({limit_text(m['limit_mb'])})"
                       + (f", largest tensor {m['graph']['largest_tensor_mb']:.2f} MB" if "graph" in m else ""))  # fmt: skip
    if "latency" in result.manifest:
        click.echo(result.manifest["latency"]["table"])
    took = time.perf_counter() - start
    if result.memory_failures:
        fail("a memory gate failed: " + "; ".join(result.memory_failures)
             + f". Nothing was published to {out}. Failed export kept in {result.out_dir}", 1)  # fmt: skip
    if not result.passed:
        fail(f"a parity gate failed; nothing was published to {out}. Failed export kept in {result.out_dir}", 1)
    files = ", ".join(result.manifest["files"])
    click.echo(f"verified and wrote {result.out_dir}/ ({files}, manifest.json, report.md) in {took:.1f} s")


def export_options(fn):
    fn = click.option("--arch", type=ARCH_CHOICES, help="Override the architecture detected from the keys.")(fn)
    fn = click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/default"),
                      show_default=True, help="Output folder (created; refused if it exists without --overwrite).")(fn)  # fmt: skip
    fn = click.option("--overwrite", is_flag=True, help="Replace an existing export folder once the new export passed "
                      "(only a MobileGen export: anything else is refused).")(fn)  # fmt: skip
    fn = click.option("--batch", type=click.IntRange(1, 16), default=1, show_default=True,
                      help="Fixed batch of the exported graph (2 runs a guided step in one call).")(fn)  # fmt: skip
    fn = click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for every backend [all cores].")(fn)
    fn = click.option("--max-tensor-mb", type=FiniteFloat(0, min_open=True, allow_inf=True), default=None,
                      help="Largest tensor of the graph: attention runs in chunks to fit [4 x batch]; inf: unbounded.")(fn)  # fmt: skip
    fn = click.option("--max-memory-mb", type=FiniteFloat(0, min_open=True), default=None,
                      help="Memory gate: peak RSS of a fresh process running a file, over the bare process "
                           "[fp32 64, others 48 at batch 1; x0.75 x batch above; ONNX 96].")(fn)  # fmt: skip
    return fn


@export_cli.command("onnx")
@CHECKPOINT
@export_options
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@handle_errors
def onnx_command(checkpoint, arch, out, overwrite, batch, threads, max_tensor_mb, max_memory_mb, layout) -> None:
    """Export CHECKPOINT (default: untrained v2) to a verified denoiser.onnx."""
    _export(checkpoint, arch, out, overwrite, batch, threads, tflite=False, fp16=False, layout=layout, bench=False,
            max_tensor_mb=max_tensor_mb, max_memory_mb=max_memory_mb)  # fmt: skip


@export_cli.command("tflite")
@CHECKPOINT
@export_options
@click.option("--fp16", is_flag=True, help="Also write denoiser_float16.tflite (float16 weights, float32 IO).")
@click.option("--prune", type=FiniteFloat(0, 1, max_open=True), default=0.0, show_default=True,
              help="L1 unstructured pruning amount per layer (0 = off).")  # fmt: skip
@click.option("--int8", "int8", type=click.Choice(["dynamic", "full"]), multiple=True,
              help="Also write denoiser_int8_<mode>.tflite, float32 IO (repeatable). dynamic: int8 weights, activations "
                   "quantized per call (gate: PSNR >= 30 dB). full: int8 weights and calibrated int8 activations "
                   "in every conv/linear layer (gate: PSNR >= 30 dB).")  # fmt: skip
@click.option("--calibration-samples", type=click.IntRange(22, 5000), default=320, show_default=True,
              help="Inputs that calibrate --int8 full (half forward-process x_t, half from real DDIM sampling).")  # fmt: skip
@click.option("--no-bench", is_flag=True, help="Skip the latency benchmark.")
@handle_errors
def tflite_command(checkpoint, arch, out, overwrite, batch, threads, max_tensor_mb, max_memory_mb, fp16, prune, int8,
                   calibration_samples, no_bench) -> None:  # fmt: skip
    """Export CHECKPOINT (default: untrained v2) to ONNX + TFLite, verified, with manifest and report."""
    _export(checkpoint, arch, out, overwrite, batch, threads, tflite=True, fp16=fp16, prune=prune, layout="NHWC",
            bench=not no_bench, int8=tuple(dict.fromkeys(int8)), calibration_size=calibration_samples,
            max_tensor_mb=max_tensor_mb, max_memory_mb=max_memory_mb)  # fmt: skip


def parse_classes(value: str) -> tuple[int, ...]:
    from mobilegen.labels import parse_label

    return tuple(parse_label(v) for v in value.split(",") if v.strip()) if value.strip() else ()


def trajectory_options(fn):
    fn = click.option("--classes", default="cat,ship", show_default=True,
                      help="Comma-separated labels for the trajectory check ('' skips it).")(fn)  # fmt: skip
    fn = click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True,
                      help="ddpm runs the original 999-step sampler (slow).")(fn)  # fmt: skip
    fn = click.option("--steps", type=click.IntRange(1, 999), default=50, show_default=True)(fn)
    fn = click.option("--guidance", type=FiniteFloat(0, 50), default=3.0, show_default=True)(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
    fn = click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False),
                      help="PyTorch reference checkpoint [the manifest's source].")(fn)  # fmt: skip
    fn = click.option("--threads", type=click.IntRange(1, 256), default=None)(fn)
    return fn


@export_cli.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@trajectory_options
@handle_errors
def verify_command(directory, as_json, classes, sampler, steps, guidance, seed, checkpoint, threads) -> None:
    """Recheck an export folder: every sha256, per-step parity, trajectory parity. Exit 0 only if all hold."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.verify import verify_directory

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    result = verify_directory(directory, threads, checkpoint, parse_classes(classes), config)
    click.echo(json.dumps(result, indent=2) if as_json else result["summary"])
    sys.exit(0 if result["passed"] else 1)


@export_cli.command("report")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@trajectory_options
@click.option("--overwrite", is_flag=True, help="Replace an existing DIR/report.html.")
@handle_errors
def report_command(directory, classes, sampler, steps, guidance, seed, checkpoint, threads, overwrite) -> None:
    """Write DIR/report.html: sample grids per backend, per-step error curves, latency, sizes, sparsity
    (and the trajectory results into DIR/manifest.json)."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.htmlreport import write_html_report

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    labels = parse_classes(classes) or (3, 8)
    path, summary = write_html_report(directory, labels, config, checkpoint, threads, overwrite)
    click.echo(summary)
    click.echo(f"wrote {path}")


@export_cli.command("bench")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), help="PyTorch reference [the manifest's source].")
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--repeats", type=click.IntRange(3, 10000), default=20, show_default=True)
@handle_errors
def bench_command(directory, checkpoint, threads, repeats) -> None:
    """Per-step latency (warm-up, median, p90) of PyTorch and every artifact; into the manifest."""
    from mobilegen.verify import bench_directory

    latency = bench_directory(directory, checkpoint, threads, repeats)
    click.echo(f"{latency['machine']['cpu']}, {latency['threads']} threads, batch {latency['batch']}")
    click.echo(latency["table"])
    click.echo(f"{'memory (fresh process)':<34} {'peak RSS MB':>11} {'largest tensor MB':>18}")
    for name, m in latency["memory"].items():
        largest = f"{m['graph']['largest_tensor_mb']:.2f}" if "graph" in m else "-"
        click.echo(f"{name:<34} {m['peak_rss_mb']:>11.1f} {largest:>18}")


@export_cli.command("compare")
@CHECKPOINT
@click.option("--pruned", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="A structurally pruned checkpoint (mobilegen prune) to add as a row.")  # fmt: skip
@click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/compare"), show_default=True)
@click.option("--classes", default="cat,ship", show_default=True, help="Comma-separated labels for the trajectories.")
@click.option("--steps", type=click.IntRange(1, 999), default=50, show_default=True, help="DDIM steps of the trajectories.")
@click.option("--calibration-samples", type=click.IntRange(22, 5000), default=320, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True, help="Latency rounds (files take turns).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for every backend [all cores].")
@click.option("--overwrite", is_flag=True, help="Replace compare.md, compare.json and samples.png in OUT.")
@click.option("--foreign", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Another .tflite denoiser (e.g. the original project's) measured in the same rounds.")  # fmt: skip
@click.option("--foreign-inputs", default="x=input,t=onnx__Unsqueeze_1,y=onnx__Cast_2", show_default=True,
              help="Its signature inputs for x, t and y (the default names the original v2 file's).")  # fmt: skip
@handle_errors
def compare_command(checkpoint, pruned, out, classes, steps, calibration_samples, rounds, threads, overwrite, foreign,
                    foreign_inputs) -> None:  # fmt: skip
    """fp32, fp16, int8 dynamic, int8 full (and --pruned) measured side by side: compare.md/.json, samples.png."""
    from mobilegen.checkpoint import load_checkpoint
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.exporter.compare import compare, render
    from mobilegen.exporter.foreign import parse_inputs

    labels = parse_classes(classes)
    foreign_arg = (foreign, parse_inputs(foreign_inputs)) if foreign else None
    if not labels:
        raise ValueError("--classes needs at least one label")
    unpruned = load_model(checkpoint, None)
    result = compare(unpruned, load_checkpoint(pruned) if pruned else None, out, threads, labels,
                     SamplerConfig(steps=steps), calibration_samples, rounds, overwrite=overwrite, foreign=foreign_arg)  # fmt: skip
    click.echo(render(result))
    click.echo(f"wrote {out}/compare.md, compare.json, samples.png")


def sample_command(fn):
    fn = handle_errors(fn)
    fn = click.option("--label", default="cat", show_default=True, help="Class name, index, alias ('auto') or 'none'.")(fn)
    fn = click.option("--n", "n", type=click.IntRange(1, 64), default=1, show_default=True, help="Images (a grid when > 1).")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
    fn = click.option("--steps", type=click.IntRange(1, 999), default=50, show_default=True, help="DDIM steps (DDPM runs 999).")(fn)
    fn = click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)(fn)
    fn = click.option("--guidance", type=FiniteFloat(0, 50), default=3.0, show_default=True, help="0 turns guidance off.")(fn)
    fn = click.option("--eta", type=FiniteFloat(0, 1), default=0.0, show_default=True, help="DDIM noise (0 = deterministic).")(fn)
    fn = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(fn)
    fn = click.option("--max-tensor-mb", type=FiniteFloat(0, min_open=True, allow_inf=True), default=None,
                      help="Checkpoints: attention in chunks so that no tensor exceeds this [unbounded].")(fn)  # fmt: skip
    fn = click.option("--arch", type=ARCH_CHOICES)(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace an existing --out file (never the input).")(fn)
    fn = click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("sample.png"), show_default=True)(fn)
    fn = click.argument("model_path", required=False, type=click.Path(path_type=Path, dir_okay=False))(fn)
    return click.command("sample")(fn)


@sample_command
def sample(model_path, label, n, seed, steps, sampler, guidance, eta, device, max_tensor_mb, arch, out, overwrite) -> None:
    """Generate images from a checkpoint, an ONNX or a TFLite artifact (default: untrained v2)."""
    from tqdm import tqdm

    from mobilegen.diffusion import SamplerConfig, linear_schedule
    from mobilegen.generate import generate

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=seed)
    total = len(config.timesteps(linear_schedule()))
    with tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, leave=False) as bar:
        result = generate(model_path, label, n, config, device, arch, out, on_step=lambda *_: bar.update(),
                          overwrite=overwrite, max_tensor_mb=max_tensor_mb)  # fmt: skip
    click.echo(f"model: {result.model}", err=True)
    click.echo(f"{result.backend}: {result.label_name} x{n}, {config.sampler} {total} steps, guidance {guidance:g}, "
               f"seed {seed}: {result.seconds:.2f} s total, {result.seconds / n:.2f} s/image, "
               f"{1000 * result.seconds / total:.1f} ms/step -> {out}")  # fmt: skip


export_cli.add_command(sample)
main_cli.add_command(sample)


def train_options(fn):
    opts = [
        click.option("--data", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True,
                     help="CIFAR-10 layout folder: DATA/train/<class>/*.png (+ DATA/test/ for validation)."),
        click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Run folder."),
        click.option("--epochs", type=click.IntRange(1), default=100, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True),
        click.option("--lr", type=FiniteFloat(0, min_open=True), default=3e-4, show_default=True, help="One-cycle peak LR (AdamW)."),
        click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop at this global step (schedule unchanged)."),
        click.option("--qat-every", type=click.IntRange(0), default=0, show_default=True,
                     help="fp16 QAT: round weights to float16 every K steps (0 = off)."),
        click.option("--label-dropout", type=FiniteFloat(0, 1, max_open=True), default=0.1, show_default=True),
        click.option("--ema-beta", type=FiniteFloat(0, 1), default=0.995, show_default=True),
        click.option("--ema-start", type=click.IntRange(0), default=2000, show_default=True, help="EMA copies the weights until this step."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--sample-every", type=click.IntRange(0), default=0, help="Save a DDIM sample grid every N steps (0 = off)."),
        click.option("--val-every", type=click.IntRange(0), default=0, help="Validation eps-MSE every N steps (0 = at the end)."),
        click.option("--checkpoint-every", type=click.IntRange(0), default=500, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader worker processes."),
        click.option("--on-bad-image", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
                     help="Unreadable images: skip and count them, or stop."),
        click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped."),
        click.option("--overwrite", is_flag=True, help="Start over in an --out that holds a run (replaces last.pt, ema.pt)."),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _train(arch, teacher=None, noise_weight=1.0, teacher_weight=1.0, **kw) -> None:
    from tqdm import tqdm

    from mobilegen.train import TrainConfig, train

    config = TrainConfig(
        data=kw["data"], out=kw["out"], arch=arch, epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"],
        max_steps=kw["max_steps"], qat_every=kw["qat_every"], label_dropout=kw["label_dropout"], ema_beta=kw["ema_beta"],
        ema_start=kw["ema_start"], seed=kw["seed"], sample_every=kw["sample_every"], val_every=kw["val_every"],
        checkpoint_every=kw["checkpoint_every"], device=kw["device"], num_workers=kw["workers"],
        on_bad_image=kw["on_bad_image"], resume=kw["resume"], overwrite=kw["overwrite"], teacher=teacher, noise_weight=noise_weight,
        teacher_weight=teacher_weight,
    )  # fmt: skip
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    bar = tqdm(desc=f"{'distill' if teacher else 'train'} {arch}", unit="step", file=sys.stderr, disable=not rank0)

    def on_step(step: int, end: int, loss: float, ips: float) -> None:
        bar.total = end
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}", refresh=False)
        bar.refresh()

    try:
        result = train(config, on_step)
    except KeyboardInterrupt:
        bar.close()
        fail(f"interrupted; the last finished step is saved in {config.out}/last.pt: continue with --resume", 130)
    bar.close()
    if not rank0:
        return
    val = ", ".join(f"step {k}: {v:.4f}" for k, v in result.val_losses.items()) or "no test/ split"
    skipped = f", {result.skipped_images} unreadable images skipped" if result.skipped_images else ""
    click.echo(f"{arch}: step {result.step}, last loss {result.losses[-1] if result.losses else float('nan'):.4f}, "
               f"validation eps-MSE {val}, {result.images_per_second:.1f} images/s{skipped}")  # fmt: skip
    click.echo(f"wrote {config.out}/ema.pt (export it with: mobilegen-export tflite {config.out}/ema.pt --fp16) and {config.out}/last.pt")


@main_cli.command("train")
@click.option("--arch", type=ARCH_CHOICES, default="teacher", show_default=True)
@train_options
@handle_errors
def train_command(arch, **kw) -> None:
    """Train a UNet from scratch on a CIFAR-10-layout image folder."""
    _train(arch, **kw)


@main_cli.command("distill")
@click.option("--teacher", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True, help="Teacher checkpoint.")
@click.option("--arch", type=ARCH_CHOICES, default="student_v2", show_default=True, help="Student architecture.")
@click.option("--noise-weight", type=FiniteFloat(0), default=1.0, show_default=True, help="Weight of MSE(noise, student).")
@click.option("--teacher-weight", type=FiniteFloat(0), default=1.0, show_default=True, help="Weight of MSE(teacher, student).")
@train_options
@handle_errors
def distill_command(teacher, arch, noise_weight, teacher_weight, **kw) -> None:
    """Distil a teacher checkpoint into a student: loss = w_n MSE(noise, s) + w_t MSE(teacher, s)."""
    _train(arch, teacher=teacher, noise_weight=noise_weight, teacher_weight=teacher_weight, **kw)


@main_cli.command("prune")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--ratio", type=FiniteFloat(), default=0.0, show_default=True, help="Fraction of the channels of every prunable group to remove, in [0, 1).")
@click.option("--head-ratio", type=FiniteFloat(), default=0.0, show_default=True, help="Fraction of every attention block's heads to remove, in [0, 1).")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="CIFAR-10 layout folder for the fine-tune: DATA/train/<class>/*.png (+ DATA/test/).")
@click.option("--steps", type=click.IntRange(0), default=200, show_default=True, help="Fine-tune steps (0: prune only).")
@click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Run folder.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=1e-4, show_default=True, help="One-cycle peak LR (AdamW).")
@click.option("--noise-weight", type=FiniteFloat(0), default=0.0, show_default=True, help="Weight of MSE(noise, pruned).")
@click.option("--teacher-weight", type=FiniteFloat(0), default=1.0, show_default=True,
              help="Weight of MSE(unpruned, pruned): distillation from CHECKPOINT.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(0), default=500, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace pruned.pt, last.pt and ema.pt in --out (never CHECKPOINT).")
@handle_errors
def prune_command(checkpoint, ratio, head_ratio, data, steps, out, batch_size, lr, noise_weight, teacher_weight, seed,
                  checkpoint_every, device, overwrite) -> None:  # fmt: skip
    """Structured pruning of CHECKPOINT (whole channels and heads), then a distillation fine-tune from it."""
    from tqdm import tqdm

    from mobilegen.train import TrainConfig
    from mobilegen.train.prune import prune_and_distill

    config = TrainConfig(data=data, out=out, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                         device=device, noise_weight=noise_weight, teacher_weight=teacher_weight, overwrite=overwrite)  # fmt: skip
    bar = tqdm(desc="fine-tune pruned", unit="step", file=sys.stderr, total=steps, disable=True)  # shown from step 1

    def on_step(step: int, end: int, loss: float, ips: float) -> None:
        nonlocal bar
        if bar.disable:
            bar = tqdm(desc="fine-tune pruned", unit="step", file=sys.stderr, total=end)
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}", refresh=False)
        bar.refresh()

    try:
        result = prune_and_distill(checkpoint, ratio, head_ratio, steps, config, on_step)
    except KeyboardInterrupt:
        bar.close()
        fail(f"interrupted; the pruned weights are in {out}/pruned.pt and the last finished step in {out}/last.pt", 130)
    bar.close()
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    (p0, p1), (m0, m1), (h0, h1) = result.params, result.macs, result.heads
    click.echo(f"params {p0:,} -> {p1:,} ({p0 / p1:.2f}x fewer); MACs per step {m0 / 1e9:.3f} G -> {m1 / 1e9:.3f} G "
               f"({m0 / m1:.2f}x fewer); attention heads {h0} -> {h1}")  # fmt: skip
    if result.train is None:
        click.echo(f"wrote {result.pruned} (not fine-tuned; export it with: mobilegen-export tflite {result.pruned})")
        return
    val = ", ".join(f"step {k}: {v:.4f}" for k, v in result.train.val_losses.items()) or "no test/ split"
    click.echo(f"fine-tuned {result.train.step} steps, last loss {result.train.losses[-1]:.4f}, validation eps-MSE {val}")
    click.echo(f"wrote {result.pruned}, {out}/last.pt and {out}/ema.pt (export it with: mobilegen-export tflite {out}/ema.pt --fp16)")


@main_cli.command("demo-data")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--per-class", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an OUT that demo-data wrote (anything else is refused).")
@handle_errors
def demo_data_command(out, per_class, seed, overwrite) -> None:
    """Write a small CIFAR-10-layout folder of coloured shapes (for trying train/distill)."""
    from mobilegen.train import write_demo_data

    write_demo_data(out, per_class, seed, overwrite)
    click.echo(f"wrote {out}/train and {out}/test with the ten CIFAR-10 class folders")


@main_cli.command("serve")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--model", "models", multiple=True, metavar="NAME=PATH",
              help="Serve PATH (checkpoint, or .onnx/.tflite beside its manifest.json) as version NAME; repeatable.")
@click.option("--arch", type=ARCH_CHOICES, help="Override the architecture detected from CHECKPOINT's keys.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA (float16 autocast) when present, else CPU (float32).")
@click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True,
              help="Default for requests that do not choose (the app never does).")
@click.option("--steps", type=click.IntRange(1, 999), default=50, show_default=True, help="Default DDIM steps.")
@click.option("--guidance", type=FiniteFloat(0, 50), default=3.0, show_default=True, help="Default guidance (0 = off).")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Images per model call across requests (guidance doubles a request's); 1 turns batching off. "
                   "On CUDA every call runs exactly this many (at least 2; padded), so batching never changes an image: "
                   "lower it for lower single-request latency.")
@click.option("--max-wait-ms", type=FiniteFloat(0, 1000), default=5.0, show_default=True,
              help="How long a waiting denoiser call holds the model for others to join.")
@click.option("--max-n", type=click.IntRange(1, 1024), default=16, show_default=True, help="Most images per request.")
@click.option("--max-steps", type=click.IntRange(1, 999), default=250, show_default=True,
              help="Most steps per request; 999 allows the ddpm sampler.")
@click.option("--max-guidance", type=FiniteFloat(0, 1000), default=50.0, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(256, 1 << 30), default=64 * 1024, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--max-pending", type=click.IntRange(1, 1024), default=128, show_default=True,
              help="Requests generating at once; more get 503.")
@click.option("--timeout-s", type=FiniteFloat(0.1, 86400), default=120.0, show_default=True,
              help="Per-request limit, upload included; 504 after it.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browsers on ORIGIN (e.g. https://app.example); repeatable; none by default; never with credentials.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
@click.option("--ray", "use_ray", is_flag=True, help="Serve on Ray Serve with --replicas copies of the app (docs/serving.md).")
@click.option("--replicas", type=click.IntRange(1), default=2, show_default=True, help="With --ray: replicas of the app.")
@click.option("--replica-cpus", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True, help="With --ray: CPUs per replica.")
@click.option("--replica-gpus", type=FiniteFloat(0), default=0.0, show_default=True, help="With --ray: GPUs per replica.")
@click.option("--ray-address", metavar="HOST:PORT", help="With --ray: join this running cluster (ray start --head) instead of a local one.")
@click.option("--max-tensor-mb", type=FiniteFloat(0, min_open=True, allow_inf=True), default=None,
              help="Checkpoints: attention in chunks so that no tensor of a --max-batch call exceeds this [unbounded].")
@handle_errors
def serve_command(checkpoint, models, arch, host, port, device, sampler, steps, guidance, max_batch, max_wait_ms,
                  max_n, max_steps, max_guidance, max_body_bytes, max_pending, timeout_s, cors_origins, log_level,
                  use_ray, replicas, replica_cpus, replica_gpus, ray_address, max_tensor_mb) -> None:
    """Serve images over HTTP: POST /generate_image (the app), POST /v1/images, GET /v1/models, /healthz, /metrics.

    CHECKPOINT (default: the untrained v2) is served under its architecture's name (v1, v2),
    which the app's version field (1, 2) selects.
    """
    from mobilegen.serve import ModelSource, ServeConfig, parse_model_option, serve

    sources = ([ModelSource(checkpoint, arch=arch)] if checkpoint else []) + [parse_model_option(m) for m in models]
    if use_ray:  # the same app, as Ray Serve replicas
        from mobilegen.serve.ray_app import RayOptions, serve_ray

        options = RayOptions(replicas=replicas, cpus_per_replica=replica_cpus, gpus_per_replica=replica_gpus, address=ray_address)
        serve = functools.partial(serve_ray, options=options)
    serve(ServeConfig(models=tuple(sources), host=host, port=port, device=device, sampler=sampler, steps=steps,
                      guidance=guidance, max_batch=max_batch, max_wait_ms=max_wait_ms, max_n=max_n, max_steps=max_steps,
                      max_guidance=max_guidance, max_body_bytes=max_body_bytes, max_pending=max_pending,
                      timeout_s=timeout_s, cors_origins=tuple(cors_origins), log_level=log_level,
                      max_tensor_mb=max_tensor_mb))  # fmt: skip


if __name__ == "__main__":
    export_cli()
