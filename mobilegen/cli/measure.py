"""The measuring commands behind the docs' figures: `mobilegen-export perf-tables` (the
tables of docs/performance.md, from the files that measured them), `mobilegen-export
compare-budgets` (the fp32 file at several --max-tensor-mb budgets) and `mobilegen
bench-train` (training throughput per architecture)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from mobilegen.cli.core import (
    ARCH_CHOICES,
    DEVICE_CHOICES,
    FiniteFloat,
    arch_option,
    foreign_file,
    foreign_options,
    load_model,
    overwrite_option,
    threads_option,
)
from mobilegen.contract import defaults

TABLE_CHOICES = click.Choice(["variants", "memory", "latency"])
JSON_OUT = click.option(
    "--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the results here."
)


def register(export_cli: click.Group, main_cli: click.Group) -> None:
    export_cli.add_command(perf_tables_command)
    export_cli.add_command(compare_budgets_command)
    main_cli.add_command(bench_train_command)


def write_results(path: Path | None, overwrite: bool, data: dict) -> None:
    from mobilegen.files import write_json

    if path is not None:
        write_json(path, data)
        click.echo(f"wrote {path}")


def check_json_out(path: Path | None, overwrite: bool) -> None:
    """Before the measurement: an output in the way fails now, not after minutes of work."""
    from mobilegen.files import check_output_file

    if path is not None:
        check_output_file(path, overwrite)


@click.command("perf-tables")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--bench",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="An export's manifest.json after `mobilegen-export bench` (its latency section), repeatable.",
)
@click.option("--only", type=TABLE_CHOICES, multiple=True, help="Print only these tables (repeatable) [all].")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), help="Write to this file instead of stdout.")
@click.option(
    "--update",
    is_flag=True,
    help="FILES are markdown files: rewrite each <!-- perf_tables: ARGS --> block with the output of `perf-tables ARGS`.",
)
def perf_tables_command(files, bench, only, out, update) -> None:
    """Markdown tables from a compare.json (FILES: at most one) and --bench manifests, stamped with the
    commit and the machine each file records (docs/performance.md holds them)."""
    from mobilegen.verify.tables import update as update_blocks

    if update:
        if not files or bench or only or out:
            raise click.UsageError("--update takes only the markdown FILES to rewrite")
        for path in update_blocks(list(files), block_tables):
            click.echo(f"updated {path}", err=True)
        return
    text = tables_text(files, bench, only)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)


def tables_text(files: tuple[Path, ...], bench: tuple[Path, ...], only: tuple[str, ...]) -> str:
    from mobilegen.verify.tables import TABLES, render

    if len(files) > 1:
        raise click.UsageError(f"one compare.json at most (got {len(files)}); --update rewrites markdown files")
    return render(files[0] if files else None, list(bench), list(only) or list(TABLES))


def block_tables(args: str) -> str:
    """The tables a `<!-- perf_tables: ARGS -->` block holds: ARGS parsed as this command's."""
    ctx = perf_tables_command.make_context("perf-tables", shlex.split(args))
    p = ctx.params
    if p["update"] or p["out"]:
        raise click.UsageError(f"a block's ARGS print tables; --update and -o do not belong there: {args!r}")
    return tables_text(p["files"], p["bench"], p["only"])


class Budgets(click.ParamType):
    """Comma-separated --max-tensor-mb values, each > 0 ('inf': unbounded)."""

    name = "budgets"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        one = FiniteFloat(0, min_open=True, allow_inf=True)
        return tuple(one.convert(v.strip(), param, ctx) for v in str(value).split(",") if v.strip())


@click.command("compare-budgets")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))
@arch_option()
@click.option(
    "--budgets",
    type=Budgets(),
    default="inf,64,16,8,4,3",
    show_default=True,
    help="--max-tensor-mb of each fp32 file, comma-separated (inf: unbounded); the first is the 'vs first' reference.",
)
@click.option(
    "--splits",
    default=defaults.ATTENTION_SPLIT,
    show_default=True,
    help=f"Attention splits to build at each bounded budget, comma-separated ({', '.join(defaults.ATTENTION_SPLITS)}).",
)
@foreign_options()
@click.option("--rounds", type=click.IntRange(1, 1000), default=10, show_default=True, help="Latency rounds (files take turns).")
@click.option("--repeats", type=click.IntRange(1, 1000), default=10, show_default=True, help="Calls per file per round.")
@threads_option()
@JSON_OUT
@overwrite_option("Replace an existing --json file.")
def compare_budgets_command(
    checkpoint, arch, budgets, splits, foreign, foreign_inputs, rounds, repeats, threads, json_out, overwrite
) -> None:
    """Step time and memory of the fp32 TFLite file of CHECKPOINT (default: untrained v2) at each attention budget."""
    from mobilegen.jobs.budgets import compare_budgets, render_budgets

    check_json_out(json_out, overwrite)
    loaded = load_model(checkpoint, arch)
    foreign_arg = foreign_file(foreign, foreign_inputs)
    split_list = tuple(s.strip() for s in splits.split(",") if s.strip())
    result = compare_budgets(loaded, budgets, threads, rounds, repeats, foreign_arg, split_list)
    click.echo(render_budgets(result), nl=False)
    write_results(json_out, overwrite, result)


@click.command("bench-train")
@click.option("--arch", "archs", type=ARCH_CHOICES, multiple=True, help="Architectures to time (repeatable) [all three].")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--warmup", type=click.IntRange(0, 1000), default=2, show_default=True, help="Untimed steps first.")
@click.option("--repeats", type=click.IntRange(1, 10000), default=5, show_default=True, help="Timed steps.")
@click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True)
@JSON_OUT
@overwrite_option("Replace an existing --json file.")
def bench_train_command(archs, batch_size, warmup, repeats, device, json_out, overwrite) -> None:
    """Training throughput: seconds per optimizer step and images/s per architecture (synthetic batches)."""
    from mobilegen.models import ARCHS
    from mobilegen.train.bench import bench_train, render_bench_train

    check_json_out(json_out, overwrite)
    result = bench_train(tuple(dict.fromkeys(archs)) or tuple(ARCHS), batch_size, warmup, repeats, device)
    click.echo(render_bench_train(result), nl=False)
    write_results(json_out, overwrite, result)
