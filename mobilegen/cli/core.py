"""What every command shares: the option types and decorators, the error handling of the
command group, and the progress bar of the training loops.

Errors: a domain error (mobilegen.errors.MobileGenError) is one line and its exit code
(2 for bad input, 1 for a failed gate or a non-finite result); Ctrl-C or SIGTERM exits
130 after clean-up; an OSError (full disk, permissions) is one line and exit 2. Anything
else is a bug: its traceback is shown and the exit code is 1. `--debug` shows the
traceback of every error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from pathlib import Path

import click

from mobilegen.contract import defaults

ARCH_CHOICES = click.Choice(["teacher", "student_v1", "student_v2"])
DEVICE_CHOICES = click.Choice(["auto", "cpu", "cuda"])
SAMPLER_CHOICES = click.Choice(["ddim", "ddpm"])
CONTEXT = {"help_option_names": ["-h", "--help"]}


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


class AnyFinite(click.ParamType):
    """A float option with no bounds but finiteness (the command checks its own range)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


class Group(click.Group):
    """A command group whose every command runs under one error handler (see the module doc)."""

    def invoke(self, ctx: click.Context):
        from mobilegen.errors import MobileGenError
        from mobilegen.files import sigterm_as_interrupt

        debug = bool(ctx.params.get("debug"))
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            if debug:
                raise
            fail(
                f"interrupted ({exc.args[0] if exc.args else 'Ctrl-C'}); stopped and cleaned up: "
                "outputs are only ever published whole",
                130,
            )
        except MobileGenError as exc:
            if debug:
                raise
            for result in getattr(exc, "results", ()):  # a GateError: every gate's summary, then the verdict
                click.echo(result.summary(), err=True)
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # full disk, permissions: nothing was published
            if debug:
                raise
            fail(f"{exc.strerror or exc} ({exc.filename or ''}); no output was published", 2)


def group(help_text: str):
    """A top-level command group with --version and --debug."""

    def make(fn):
        fn = click.option("--debug", is_flag=True, help="Show the traceback of every error.")(fn)
        fn = click.version_option(package_name="mobilegen")(fn)
        return click.group(cls=Group, context_settings=CONTEXT, help=help_text)(fn)

    return make


def options(*decorators):
    """Apply option decorators in the order they are listed (the order --help shows)."""

    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# Options declared once, used by several commands.
def threads_option(help_text: str = "CPU threads for every backend [every CPU this process may use]."):
    return click.option("--threads", type=click.IntRange(1, 256), default=None, help=help_text)


def device_option(help_text: str | None = None):
    return click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True, help=help_text)


class Seed(click.ParamType):
    """A seed in 0..MAX_SEED, the rule the server applies too (the bound is read when a value is
    converted, so that --help does not import torch)."""

    name = "seed"

    def convert(self, value, param, ctx):
        from mobilegen.diffusion.sampler import MAX_SEED

        number = click.INT.convert(value, param, ctx)
        if not 0 <= number <= MAX_SEED:
            self.fail(f"{str(value)[:40]} is not in 0..{MAX_SEED} (2^63-1)", param, ctx)
        return number


def seed_option():
    return click.option("--seed", type=Seed(), default=0, show_default=True, help="Seed, 0..2^63-1.")


def steps_option(default: int = 50, help_text: str | None = None, name: str = "--steps", low: int = 1):
    return click.option(name, type=click.IntRange(low, 999), default=default, show_default=True, help=help_text)


def guidance_option(help_text: str | None = None):
    return click.option("--guidance", type=FiniteFloat(0, 50), default=3.0, show_default=True, help=help_text)


def sampler_option(help_text: str | None = None):
    return click.option("--sampler", type=SAMPLER_CHOICES, default="ddim", show_default=True, help=help_text)


def arch_option(help_text: str = "Override the architecture detected from the checkpoint's keys.", default: str | None = None):
    return click.option("--arch", type=ARCH_CHOICES, default=default, show_default=default is not None, help=help_text)


def max_tensor_option(help_text: str):
    return click.option("--max-tensor-mb", type=FiniteFloat(0, min_open=True, allow_inf=True), default=None, help=help_text)


def targets_option(help_text: str):
    """--targets gpu,arm64: the phone paths (groups or single paths), parsed to path names."""

    def parse(ctx, param, value: str | None) -> tuple[str, ...]:
        from mobilegen.errors import InvalidInput
        from mobilegen.verify.targets import parse_targets

        try:
            return parse_targets(value) if value is not None else ()
        except InvalidInput as exc:
            raise click.BadParameter(str(exc).removeprefix("--targets: ")) from None

    groups = ", ".join(f"{g} = {' + '.join(p)}" for g, p in defaults.TARGET_GROUPS.items())
    paths = ", ".join(defaults.TARGET_NAMES)
    return click.option(
        "--targets", default=None, callback=parse, metavar="LIST", help=f"{help_text} ({groups}; or paths: {paths})."
    )


def overwrite_option(help_text: str):
    return click.option("--overwrite", is_flag=True, help=help_text)


def foreign_options():
    """--foreign FILE and --foreign-inputs: another .tflite denoiser measured beside ours."""
    return options(
        click.option(
            "--foreign",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Another .tflite denoiser (e.g. the original project's) measured in the same rounds.",
        ),
        click.option(
            "--foreign-inputs",
            default="x=input,t=onnx__Unsqueeze_1,y=onnx__Cast_2",
            show_default=True,
            help="Its signature inputs for x, t and y (the default names the original v2 file's).",
        ),
    )


def foreign_file(foreign: Path | None, foreign_inputs: str) -> tuple[Path, dict[str, str]] | None:
    """(path, {x|t|y: signature input}) of --foreign, or None without it."""
    from mobilegen.verify.foreign import parse_inputs

    return (foreign, parse_inputs(foreign_inputs)) if foreign else None


def reference_checkpoint_option():
    return click.option(
        "--checkpoint",
        type=click.Path(path_type=Path, dir_okay=False),
        help="PyTorch reference checkpoint [the manifest's source].",
    )


def config_from(cls, values: dict, renames: dict[str, str] | None = None, **extra):
    """A config dataclass from the options whose names (after renames) are its fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    renames = renames or {}
    chosen = {renames.get(k, k): v for k, v in values.items() if renames.get(k, k) in fields}
    return cls(**(chosen | extra))


def load_model(checkpoint: Path | None, arch: str | None):
    from mobilegen.models.checkpoint import load_or_default

    loaded = load_or_default(checkpoint, arch)
    click.echo(f"model: {loaded.arch} from {loaded.source}", err=True)
    return loaded


def rank0() -> bool:
    """Under torchrun only rank 0 reports."""
    return os.environ.get("RANK", "0") == "0"


class StepBar:
    """The progress bar of a training loop, shown from its first step (on rank 0 only)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def __call__(self, step: int, end: int, loss: float, ips: float) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(desc=self.desc, unit="step", file=sys.stderr, total=end, disable=not rank0())
        self.bar.total, self.bar.n = end, step
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunBar:
    """The progress bar of the teacher's sampling runs (data-free distillation), on rank 0 only."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int, name: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(desc="teacher trajectories", unit="run", file=sys.stderr, total=total, disable=not rank0())
        self.bar.n = done
        self.bar.set_postfix_str(name, refresh=False)
        self.bar.refresh()
        if done == total:  # a later pass over the runs (the fine-tune after the head choice) gets its own bar
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def teacher_summary(runs: tuple[list[str], list[str]], inputs: int, out: Path) -> str | None:
    """One line on the teacher's trajectories of a data-free run (None when it had none)."""
    generated, reused = runs
    if not generated and not reused:
        return None
    counted = f"{inputs:,} inputs from " if inputs else ""
    return (
        f"teacher trajectories: {counted}{len(generated) + len(reused)} runs ({len(generated)} generated, "
        f"{len(reused)} read from {out}/teacher)"
    )


@contextlib.contextmanager
def training_bars(desc: str, interrupted: str):
    """The step bar and the teacher-run bar of a training job, closed however it ends; Ctrl-C
    becomes exit 130 with `interrupted` (what was saved, and how to continue)."""
    bar, runs = StepBar(desc), RunBar()
    try:
        yield bar, runs
    except KeyboardInterrupt:
        fail(interrupted, 130)
    finally:
        bar.close()
        runs.close()
