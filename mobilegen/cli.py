"""Command-line shells: parse options, call one library function, map the result to an exit code.

Heavy libraries (torch, onnx, onnx2tf, LiteRT) are imported inside the commands so
that ``--help`` is instant.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

ARCH_CHOICES = click.Choice(["teacher", "student_v1", "student_v2"])
CHECKPOINT = click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))


def fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Domain errors become one clear line and a non-zero exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mobilegen.errors import MobileGenError

        try:
            return fn(*args, **kwargs)
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
    from mobilegen.exporter.pipeline import ExportOptions, check_output_dir, export_artifacts

    check_output_dir(out, overwrite)  # before any work
    loaded = load_model(checkpoint, arch)
    start = time.perf_counter()
    result = export_artifacts(loaded, ExportOptions(out_dir=out, overwrite=overwrite, batch=batch, threads=threads, **kw))
    for name, parity in result.parity.items():
        click.echo(parity.summary())
    if "latency" in result.manifest:
        click.echo(result.manifest["latency"]["table"])
    took = time.perf_counter() - start
    if not result.passed:
        fail(f"a parity gate failed; nothing was published to {out}. Failed export kept in {result.out_dir}", 1)
    files = ", ".join(result.manifest["files"])
    click.echo(f"verified and wrote {result.out_dir}/ ({files}, manifest.json, report.md) in {took:.1f} s")


def export_options(fn):
    fn = click.option("--arch", type=ARCH_CHOICES, help="Override the architecture detected from the keys.")(fn)
    fn = click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/default"),
                      show_default=True, help="Output folder (created; refused if it exists without --overwrite).")(fn)  # fmt: skip
    fn = click.option("--overwrite", is_flag=True, help="Replace an existing output folder once the new export passed.")(fn)
    fn = click.option("--batch", type=click.IntRange(1, 16), default=1, show_default=True,
                      help="Fixed batch of the exported graph (2 runs a guided step in one call).")(fn)  # fmt: skip
    fn = click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for every backend [all cores].")(fn)
    return fn


@export_cli.command("onnx")
@CHECKPOINT
@export_options
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@handle_errors
def onnx_command(checkpoint, arch, out, overwrite, batch, threads, layout) -> None:
    """Export CHECKPOINT (default: untrained v2) to a verified denoiser.onnx."""
    _export(checkpoint, arch, out, overwrite, batch, threads, tflite=False, fp16=False, layout=layout, bench=False)


@export_cli.command("tflite")
@CHECKPOINT
@export_options
@click.option("--fp16", is_flag=True, help="Also write denoiser_float16.tflite (float16 weights, float32 IO).")
@click.option("--prune", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="L1 unstructured pruning amount per layer (0 = off).")  # fmt: skip
@click.option("--no-bench", is_flag=True, help="Skip the latency benchmark.")
@handle_errors
def tflite_command(checkpoint, arch, out, overwrite, batch, threads, fp16, prune, no_bench) -> None:
    """Export CHECKPOINT (default: untrained v2) to ONNX + TFLite, verified, with manifest and report."""
    _export(checkpoint, arch, out, overwrite, batch, threads, tflite=True, fp16=fp16, prune=prune, layout="NHWC", bench=not no_bench)


def parse_classes(value: str) -> tuple[int, ...]:
    from mobilegen.labels import parse_label

    return tuple(parse_label(v) for v in value.split(",") if v.strip()) if value.strip() else ()


def trajectory_options(fn):
    fn = click.option("--classes", default="cat,ship", show_default=True,
                      help="Comma-separated labels for the trajectory check ('' skips it).")(fn)  # fmt: skip
    fn = click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True,
                      help="ddpm runs the original 999-step sampler (slow).")(fn)  # fmt: skip
    fn = click.option("--steps", type=click.IntRange(1, 999), default=50, show_default=True)(fn)
    fn = click.option("--guidance", type=click.FloatRange(0, 50), default=3.0, show_default=True)(fn)
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
@handle_errors
def report_command(directory, classes, sampler, steps, guidance, seed, checkpoint, threads) -> None:
    """Write DIR/report.html: sample grids per backend, per-step error curves, latency, sizes, sparsity."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.htmlreport import write_html_report

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    labels = parse_classes(classes) or (3, 8)
    path, summary = write_html_report(directory, labels, config, checkpoint, threads)
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


def sample_command(fn):
    fn = handle_errors(fn)
    fn = click.option("--label", default="cat", show_default=True, help="Class name, index, alias ('auto') or 'none'.")(fn)
    fn = click.option("--n", "n", type=click.IntRange(1, 64), default=1, show_default=True, help="Images (a grid when > 1).")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
    fn = click.option("--steps", type=click.IntRange(1, 999), default=50, show_default=True, help="DDIM steps (DDPM runs 999).")(fn)
    fn = click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)(fn)
    fn = click.option("--guidance", type=click.FloatRange(0, 50), default=3.0, show_default=True, help="0 turns guidance off.")(fn)
    fn = click.option("--eta", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="DDIM noise (0 = deterministic).")(fn)
    fn = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(fn)
    fn = click.option("--arch", type=ARCH_CHOICES)(fn)
    fn = click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("sample.png"), show_default=True)(fn)
    fn = click.argument("model_path", required=False, type=click.Path(path_type=Path, dir_okay=False))(fn)
    return click.command("sample")(fn)


@sample_command
def sample(model_path, label, n, seed, steps, sampler, guidance, eta, device, arch, out) -> None:
    """Generate images from a checkpoint, an ONNX or a TFLite artifact (default: untrained v2)."""
    from tqdm import tqdm

    from mobilegen.diffusion import SamplerConfig, linear_schedule
    from mobilegen.generate import generate

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=seed)
    total = len(config.timesteps(linear_schedule()))
    with tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, leave=False) as bar:
        result = generate(model_path, label, n, config, device, arch, out, on_step=lambda *_: bar.update())
    click.echo(f"model: {result.model}", err=True)
    click.echo(f"{result.backend}: {result.label_name} x{n}, {config.sampler} {total} steps, guidance {guidance:g}, "
               f"seed {seed}: {result.seconds:.2f} s total, {result.seconds / n:.2f} s/image, "
               f"{1000 * result.seconds / total:.1f} ms/step -> {out}")  # fmt: skip


export_cli.add_command(sample)
main_cli.add_command(sample)


if __name__ == "__main__":
    export_cli()
