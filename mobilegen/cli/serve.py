"""The serving commands of `mobilegen`: serve, bench-serve, soak-serve."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from mobilegen.cli.core import (
    FiniteFloat,
    arch_option,
    config_from,
    device_option,
    guidance_option,
    max_tensor_option,
    options,
    overwrite_option,
    sampler_option,
    steps_option,
)


def register(cli: click.Group) -> None:
    for command in (serve_command, bench_serve_command, soak_serve_command):
        cli.add_command(command)


@click.command("serve")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="Serve PATH (checkpoint, or .onnx/.tflite beside its manifest.json) as version NAME; repeatable.",
)
@arch_option("Override the architecture detected from CHECKPOINT's keys.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@device_option("auto: CUDA (float16 autocast) when present, else CPU (float32).")
@sampler_option("Default for requests that do not choose (the app never does).")
@steps_option(help_text="Default DDIM steps.")
@guidance_option("Default guidance (0 = off).")
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="Images per model call across requests (guidance doubles a request's); 1 turns batching off. "
    "On CUDA every call runs exactly this many (at least 2; padded), so batching never changes an image: "
    "lower it for lower single-request latency.",
)
@click.option(
    "--max-wait-ms",
    type=FiniteFloat(0, 1000),
    default=5.0,
    show_default=True,
    help="How long a waiting denoiser call holds the model for others to join.",
)
@click.option("--max-n", type=click.IntRange(1, 1024), default=16, show_default=True, help="Most images per request.")
@steps_option(250, "Most steps per request; 999 allows the ddpm sampler.", name="--max-steps")
@click.option("--max-guidance", type=FiniteFloat(0, 1000), default=50.0, show_default=True)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(256, 1 << 30),
    default=64 * 1024,
    show_default=True,
    help="Larger request bodies get 413.",
)
@click.option(
    "--max-pending",
    type=click.IntRange(1, 1024),
    default=128,
    show_default=True,
    help="Requests generating at once; more get 503.",
)
@click.option(
    "--timeout-s",
    type=FiniteFloat(0.1, 86400),
    default=120.0,
    show_default=True,
    help="Per-request limit, upload included; 504 after it.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Allow browsers on ORIGIN (e.g. https://app.example); repeatable; none by default; never with credentials.",
)
@click.option(
    "--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True
)
@click.option("--ray", "use_ray", is_flag=True, help="Serve on Ray Serve with --replicas copies of the app (docs/serving.md).")
@click.option("--replicas", type=click.IntRange(1), default=2, show_default=True, help="With --ray: replicas of the app.")
@click.option(
    "--replica-cpus", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True, help="With --ray: CPUs per replica."
)
@click.option("--replica-gpus", type=FiniteFloat(0), default=0.0, show_default=True, help="With --ray: GPUs per replica.")
@click.option(
    "--ray-address", metavar="HOST:PORT", help="With --ray: join this running cluster (ray start --head) instead of a local one."
)
@click.option(
    "--ray-batching",
    type=click.Choice(["ours", "serve"]),
    default="ours",
    show_default=True,
    help="With --ray: ours = our micro-batcher in each replica (merges denoiser calls at every step); "
    "serve = Serve's @serve.batch on whole requests (docs/serving.md).",
)
@max_tensor_option("Checkpoints: attention in chunks so that no tensor of a --max-batch call exceeds this [unbounded].")
def serve_command(
    checkpoint, models, arch, cors_origins, use_ray, replicas, replica_cpus, replica_gpus, ray_address, ray_batching, **values
) -> None:
    """Serve images over HTTP: POST /generate_image (the app), POST /v1/images, GET /v1/models, /healthz, /metrics.

    CHECKPOINT (default: the untrained v2) is served under its architecture's name (v1, v2),
    which the app's version field (1, 2) selects.
    """
    from mobilegen.serve import ModelSource, ServeConfig, parse_model_option, serve

    sources = ([ModelSource(checkpoint, arch=arch)] if checkpoint else []) + [parse_model_option(m) for m in models]
    if use_ray:  # the same app, as Ray Serve replicas
        from mobilegen.serve.ray_app import RayOptions, serve_ray

        options_ = RayOptions(
            replicas=replicas,
            cpus_per_replica=replica_cpus,
            gpus_per_replica=replica_gpus,
            address=ray_address,
            batching=ray_batching,
        )
        serve = functools.partial(serve_ray, options=options_)
    serve(config_from(ServeConfig, values, models=tuple(sources), cors_origins=tuple(cors_origins)))


load_options = options(
    click.argument("models", nargs=-1, type=click.Path(path_type=Path, dir_okay=False, exists=True)),
    steps_option(10, "DDIM steps of the server's default (the soak's requests choose 1-3)."),
    guidance_option("The server's default guidance."),
    click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True, help="The server's --max-batch."),
    click.option("--max-wait-ms", type=FiniteFloat(0, 1000), default=5.0, show_default=True),
    click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the results here."),
    overwrite_option("Replace an existing --json file."),
)


def load_header(what: str) -> None:
    import os

    import torch

    from mobilegen.verify.timing import machine, machine_line

    click.echo(f"machine: {machine_line(machine())}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if hasattr(os, "getloadavg"):  # other work on the machine skews every number
        click.echo(f"load average before the run (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    click.echo(what)


def write_results(path: Path | None, overwrite: bool, data: dict) -> None:
    from mobilegen.files import check_output_file, write_json
    from mobilegen.verify.timing import machine

    if path is not None:
        check_output_file(path, overwrite)
        write_json(path, {"machine": machine()} | data)
        click.echo(f"wrote {path}")


@click.command("bench-serve")
@load_options
@click.option(
    "--modes",
    default="on,off",
    show_default=True,
    help="Comma-separated: on (our batcher), off (--max-batch 1), rayN (Ray Serve, N replicas), rayN-serve "
    "(the same with @serve.batch); a mode may repeat to show the spread.",
)
@click.option("--clients", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--duration", type=FiniteFloat(1, 3600), default=25.0, show_default=True, help="Seconds of load per mode.")
@click.option("--n", "n", type=click.IntRange(1, 64), default=1, show_default=True, help="Images per request.")
def bench_serve_command(
    models, steps, guidance, max_batch, max_wait_ms, json_out, overwrite, modes, clients, duration, n
) -> None:
    """Throughput of `mobilegen serve` (MODELS, default: the untrained v2) under N clients, per batching mode."""
    from mobilegen.serve import ServeConfig
    from mobilegen.serve.loadtest import LoadPlan, bench_table, parse_modes, run_mode

    names = parse_modes(modes)
    if json_out is not None:
        from mobilegen.files import check_output_file

        check_output_file(json_out, overwrite)  # before minutes of load
    config = ServeConfig(
        steps=steps,
        guidance=guidance,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_n=max(16, n),
        max_pending=max(64, 2 * clients),
        timeout_s=600,
        log_level="warning",
    )
    plan = LoadPlan(clients, duration, n)
    load_header(
        f"load: {clients} clients x {duration:g} s per mode; ddim {steps} steps, guidance {guidance:g}, n={n}; "
        f"max wait {max_wait_ms:g} ms"
    )
    results = []
    for mode in names:
        click.echo(f"running batching {mode} ...")
        results.append(run_mode(config, list(models), plan, mode))
    click.echo(bench_table(results))
    write_results(json_out, overwrite, {"plan": vars(plan), "steps": steps, "guidance": guidance, "results": results})


@click.command("soak-serve")
@load_options
@click.option("--requests", type=click.IntRange(1), default=500, show_default=True, help="Requests in the storm.")
@click.option("--clients", type=click.IntRange(1, 1024), default=20, show_default=True, help="Concurrent clients.")
@click.option("--hangup", type=FiniteFloat(0, 1), default=0.2, show_default=True, help="Share of clients that hang up.")
@click.option(
    "--level-at",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Growth is measured from the peak RSS over the first this-many storm requests.",
)
@click.option("--idle-s", type=FiniteFloat(0, 3600), default=20.0, show_default=True, help="Idle time after the storm.")
def soak_serve_command(
    models, steps, guidance, max_batch, max_wait_ms, json_out, overwrite, requests, clients, hangup, level_at, idle_s
) -> None:
    """Server RSS under a bounded storm of mixed requests (MODELS, default: the untrained v2), sampled throughout."""
    from mobilegen.errors import InvalidInput
    from mobilegen.serve import ServeConfig
    from mobilegen.serve.soak import SoakPlan, soak, soak_summary

    if level_at >= requests:
        raise InvalidInput(f"--level-at {level_at} must be below --requests {requests}")
    if json_out is not None:
        from mobilegen.files import check_output_file

        check_output_file(json_out, overwrite)
    config = ServeConfig(
        steps=steps,
        guidance=guidance,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_n=4,
        max_pending=max(128, 2 * clients),
        timeout_s=600,
        log_level="warning",
    )
    plan = SoakPlan(requests=requests, clients=clients, hangup=hangup, checkpoint_at=level_at, idle_s=idle_s)
    load_header(f"soak: {requests} requests of 1-4 images, 1-3 steps, guided or not; --max-batch {max_batch}")
    result = soak(config, list(models), plan)
    click.echo(soak_summary(result))
    write_results(json_out, overwrite, result)
