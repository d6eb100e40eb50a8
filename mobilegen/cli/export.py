"""The commands of `mobilegen-export`: onnx, tflite, verify, report, bench, profile, compare."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from mobilegen.cli.core import (
    FiniteFloat,
    arch_option,
    foreign_file,
    foreign_options,
    guidance_option,
    load_model,
    max_tensor_option,
    options,
    overwrite_option,
    reference_checkpoint_option,
    sampler_option,
    seed_option,
    steps_option,
    targets_option,
    threads_option,
)
from mobilegen.contract import defaults
from mobilegen.contract.spec import LAYOUTS
from mobilegen.errors import GateError

CHECKPOINT = click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))
DIRECTORY = click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
export_options = options(
    arch_option(),
    click.option(
        "-o",
        "--out",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("artifacts/default"),
        show_default=True,
        help="Output folder (created; refused if it exists without --overwrite).",
    ),
    overwrite_option(
        "Replace an existing export folder once the new export passed (only a MobileGen export: anything else is refused)."
    ),
    click.option(
        "--batch",
        type=click.IntRange(1, 16),
        default=defaults.BATCH,
        show_default=True,
        help="Fixed batch of the exported graph (2 runs a guided step in one call).",
    ),
    threads_option(),
    max_tensor_option("Largest tensor of the graph: attention runs in chunks to fit [4 x batch]; inf: unbounded."),
    click.option(
        "--attention-split",
        type=click.Choice(defaults.ATTENTION_SPLITS),
        default=defaults.ATTENTION_SPLIT,
        show_default=True,
        help="How a bounded attention block is split: per-head (one head at a time, long row chunks; measured "
        "faster on an AVX-512 Xeon and an AVX2 EPYC) or all-heads (every head together, short row chunks). "
        "Same numbers either way.",
    ),
    click.option(
        "--max-memory-mb",
        type=FiniteFloat(0, min_open=True),
        default=None,
        help="Memory gate: peak RSS of a fresh process running a file, over the bare process [student_v2: "
        "fp32 and fp16 64, int8 48, ONNX 96 at batch 1, x0.75 x batch above; other architectures: not gated].",
    ),
)
trajectory_options = options(
    click.option(
        "--classes",
        default=defaults.CLASSES,
        show_default=True,
        help="Comma-separated labels for the trajectory check ('' skips it).",
    ),
    sampler_option("ddpm runs the original 999-step sampler (slow)."),
    steps_option(),
    guidance_option(),
    seed_option(),
    reference_checkpoint_option(),
    threads_option(),
)


def register(cli: click.Group) -> None:
    for command in (
        onnx_command,
        tflite_command,
        verify_command,
        report_command,
        bench_command,
        profile_command,
        compare_command,
    ):
        cli.add_command(command)


def run_export(checkpoint, arch, out, overwrite, batch, threads, **kw) -> None:
    from mobilegen.jobs.export import check_output_dir, export_artifacts

    check_output_dir(out, overwrite, checkpoint)  # before any work
    if kw.get("targets"):
        from mobilegen.verify.targets import check_runtimes

        check_runtimes(kw["targets"])
    loaded = load_model(checkpoint, arch)
    start = time.perf_counter()
    result = export_artifacts(loaded, export_options_of(out, overwrite, batch, threads, **kw))  # GateError: exit 1
    for gate in result.gates:
        click.echo(gate.summary())
    if "latency" in result.manifest:
        click.echo(result.manifest["latency"]["table"])
    files = ", ".join([*result.manifest["files"], *([defaults.TARGETS_PNG] if "targets" in result.manifest else [])])
    click.echo(f"verified and wrote {result.out_dir}/ ({files}, manifest.json, report.md) in {time.perf_counter() - start:.1f} s")


def export_options_of(
    out,
    overwrite,
    batch,
    threads,
    *,
    tflite,
    fp16,
    layout,
    bench,
    max_tensor_mb,
    max_memory_mb,
    attention_split=defaults.ATTENTION_SPLIT,
    prune=defaults.PRUNE,
    int8=(),
    calibration_size=defaults.CALIBRATION_SAMPLES,
    targets=(),
):
    from mobilegen.export.build import BuildOptions
    from mobilegen.jobs.export import ExportOptions

    build = BuildOptions(tflite=tflite, fp16=fp16, int8=int8, calibration_size=calibration_size, attention_split=attention_split)
    return ExportOptions(
        out_dir=out,
        build=build,
        batch=batch,
        layout=layout,
        prune=prune,
        overwrite=overwrite,
        bench=bench,
        threads=threads,
        max_tensor_mb=max_tensor_mb,
        max_memory_mb=max_memory_mb,
        targets=targets,
    )


@click.command("onnx")
@CHECKPOINT
@export_options
@click.option("--layout", type=click.Choice(LAYOUTS), default=defaults.LAYOUT["onnx"], show_default=True)
def onnx_command(checkpoint, arch, out, overwrite, batch, threads, max_tensor_mb, attention_split, max_memory_mb, layout) -> None:
    """Export CHECKPOINT (default: untrained v2) to a verified denoiser.onnx."""
    run_export(
        checkpoint,
        arch,
        out,
        overwrite,
        batch,
        threads,
        tflite=False,
        fp16=False,
        layout=layout,
        bench=False,
        max_tensor_mb=max_tensor_mb,
        attention_split=attention_split,
        max_memory_mb=max_memory_mb,
    )


@click.command("tflite")
@CHECKPOINT
@export_options
@click.option("--fp16", is_flag=True, help="Also write denoiser_float16.tflite (float16 weights, float32 IO).")
@click.option(
    "--prune",
    type=FiniteFloat(0, 1, max_open=True),
    default=defaults.PRUNE,
    show_default=True,
    help="L1 unstructured pruning amount per layer (0 = off).",
)
@click.option(
    "--int8",
    "int8",
    type=click.Choice(["dynamic", "full"]),
    multiple=True,
    help="Also write denoiser_int8_<mode>.tflite, float32 IO (repeatable). dynamic: int8 weights, activations "
    "quantized per call (gate: PSNR >= 30 dB). full: int8 weights and calibrated int8 activations "
    "in every conv/linear layer (gate: PSNR >= 30 dB).",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(22, 5000),
    default=defaults.CALIBRATION_SAMPLES,
    show_default=True,
    help="Inputs that calibrate --int8 full (half forward-process x_t, half from real DDIM sampling).",
)
@click.option("--no-bench", is_flag=True, help="Skip the latency benchmark.")
@targets_option(
    "Also check every .tflite file on these phone paths and gate on them: one step on 4 cases against float64, "
    "GPU op coverage, and the float16 paths' guided DDIM-10 image (slow: minutes per path on a real model; "
    "lavapipe and qemu stand in for the phone)"
)
def tflite_command(
    checkpoint,
    arch,
    out,
    overwrite,
    batch,
    threads,
    max_tensor_mb,
    attention_split,
    max_memory_mb,
    fp16,
    prune,
    int8,
    calibration_samples,
    no_bench,
    targets,
) -> None:
    """Export CHECKPOINT (default: untrained v2) to ONNX + TFLite, verified, with manifest and report."""
    run_export(
        checkpoint,
        arch,
        out,
        overwrite,
        batch,
        threads,
        tflite=True,
        fp16=fp16,
        prune=prune,
        layout=defaults.LAYOUT["tflite"],
        bench=not no_bench,
        int8=tuple(dict.fromkeys(int8)),
        calibration_size=calibration_samples,
        max_tensor_mb=max_tensor_mb,
        attention_split=attention_split,
        max_memory_mb=max_memory_mb,
        targets=targets,
    )


def parse_classes(value: str) -> tuple[int, ...]:
    from mobilegen.contract.labels import parse_label

    return tuple(parse_label(v) for v in value.split(",") if v.strip()) if value.strip() else ()


@click.command("verify")
@DIRECTORY
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@trajectory_options
@targets_option("Also recheck every .tflite file on these phone paths, as `tflite --targets` does (slow)")
def verify_command(directory, as_json, classes, sampler, steps, guidance, seed, checkpoint, threads, targets) -> None:
    """Recheck an export folder: every sha256, per-step parity, memory, trajectory parity (and with --targets
    the phone paths). Exit 0 only if all hold."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.jobs.verify import verify_directory

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    result = verify_directory(directory, threads, checkpoint, parse_classes(classes), config, targets)
    click.echo(json.dumps(result, indent=2) if as_json else result["summary"])
    if not result["passed"]:
        raise GateError(f"verify {directory}: {len(result['problems'])} problem(s); see above")


@click.command("report")
@DIRECTORY
@trajectory_options
@overwrite_option("Replace an existing DIR/report.html.")
def report_command(directory, classes, sampler, steps, guidance, seed, checkpoint, threads, overwrite) -> None:
    """Write DIR/report.html: sample grids per backend, per-step error curves, latency, sizes, sparsity
    (and the trajectory results into DIR/trajectory.json; the manifest is never rewritten)."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.jobs.report import write_html_report

    config = SamplerConfig(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    labels = parse_classes(classes) or parse_classes(defaults.CLASSES)
    path, summary = write_html_report(directory, labels, config, checkpoint, threads, overwrite)
    click.echo(summary)
    click.echo(f"wrote {path}")


@click.command("bench")
@DIRECTORY
@reference_checkpoint_option()
@threads_option()
@click.option("--repeats", type=click.IntRange(3, 10000), default=defaults.BENCH_REPEATS, show_default=True)
@foreign_options()
def bench_command(directory, checkpoint, threads, repeats, foreign, foreign_inputs) -> None:
    """Per-step latency (warm-up, median, p90) and peak RSS of PyTorch and every artifact (and --foreign), each
    against onnxruntime, the foreign file and the SGEMM floor; into DIR/bench.json (the manifest is never rewritten)."""
    from mobilegen.jobs.bench import bench_directory

    latency = bench_directory(directory, checkpoint, threads, repeats, foreign_file(foreign, foreign_inputs))
    click.echo(f"{latency['machine']['cpu']}, {latency['threads']} threads, batch {latency['batch']}")
    click.echo(latency["table"])
    click.echo(f"{'memory (fresh process)':<34} {'peak RSS MB':>11} {'largest tensor MB':>18}")
    for name, m in latency["memory"].items():
        largest = f"{m['graph']['largest_tensor_mb']:.2f}" if "graph" in m else "-"
        click.echo(f"{name:<34} {m['peak_rss_mb']:>11.1f} {largest:>18}")


@click.command("profile")
@DIRECTORY
@threads_option()
@click.option("--repeats", type=click.IntRange(3, 10000), default=15, show_default=True, help="Timed calls per cut.")
def profile_command(directory, threads, repeats) -> None:
    """Where a step's time goes: every file's operators and blocks timed (LiteRT: cut out one by one;
    onnxruntime: its profiler) against each block's floor; into DIR/profile.json and DIR/profile.md."""
    from mobilegen.jobs.profile import profile_directory

    _, text = profile_directory(directory, threads, repeats)
    click.echo(text)
    click.echo(f"wrote {directory / defaults.PROFILE_JSON} and {directory / defaults.PROFILE_MD}")


@click.command("compare")
@CHECKPOINT
@click.option(
    "--pruned",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A structurally pruned checkpoint (mobilegen prune) to add as a row.",
)
@click.option(
    "-o", "--out", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/compare"), show_default=True
)
@click.option("--classes", default=defaults.CLASSES, show_default=True, help="Comma-separated labels for the trajectories.")
@steps_option(help_text="DDIM steps of the trajectories.")
@click.option("--calibration-samples", type=click.IntRange(22, 5000), default=defaults.CALIBRATION_SAMPLES, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True, help="Latency rounds (files take turns).")
@click.option(
    "--image-rounds",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Rounds of the one-image time (a guided DDIM-20 image per variant, end to end).",
)
@threads_option()
@overwrite_option("Replace compare.md, compare.json and samples.png in OUT.")
@foreign_options()
def compare_command(
    checkpoint,
    pruned,
    out,
    classes,
    steps,
    calibration_samples,
    rounds,
    image_rounds,
    threads,
    overwrite,
    foreign,
    foreign_inputs,
) -> None:
    """fp32, fp16, int8 dynamic, int8 full (and --pruned) measured side by side: compare.md/.json, samples.png."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.errors import InvalidInput
    from mobilegen.jobs.compare import compare, render
    from mobilegen.models.checkpoint import load_checkpoint

    labels = parse_classes(classes)
    foreign_arg = foreign_file(foreign, foreign_inputs)
    if not labels:
        raise InvalidInput("--classes needs at least one label")
    unpruned = load_model(checkpoint, None)
    result = compare(
        unpruned,
        load_checkpoint(pruned) if pruned else None,
        out,
        threads,
        labels,
        SamplerConfig(steps=steps),
        calibration_samples,
        rounds,
        overwrite=overwrite,
        foreign=foreign_arg,
        image_rounds=image_rounds,
    )
    click.echo(render(result))
    click.echo(f"wrote {out}/compare.md, compare.json, samples.png")
