"""What every command shares (cli/core.py): --help without heavy imports, --version, and the
group's error handling: a domain error is one line, a bug keeps its traceback, NaN is no float."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mobilegen.cli import export_cli, main_cli
from mobilegen.cli.core import FiniteFloat, Seed, config_from


def run(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_commands_without_heavy_imports():
    res = run(export_cli, "--help")
    assert res.exit_code == 0
    for command in ("onnx", "tflite", "verify", "bench", "sample"):
        assert command in res.output
    code = "import sys, mobilegen.cli; print(sorted(m for m in ('torch', 'onnx', 'onnx2tf', 'ai_edge_litert') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "--help must not import heavy libraries"


@pytest.mark.parametrize("argv", [["-m", "mobilegen", "--version"], ["-m", "mobilegen.cli", "--version"]])
def test_version_and_python_dash_m(argv):
    from importlib.metadata import version

    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith(f"version {version('mobilegen')}")


BUG = """
import sys
import mobilegen.runtime.generate as g
def broken(*args, **kwargs):
    raise RuntimeError("an internal bug")
g.prepare = broken
from mobilegen.cli import main_cli
main_cli(sys.argv[1:], prog_name="mobilegen")
"""


def test_an_internal_error_keeps_its_traceback_and_exits_1(tmp_path):
    res = subprocess.run([sys.executable, "-c", BUG, "sample", "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "RuntimeError: an internal bug" in res.stderr


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_a_domain_error_is_one_line_and_debug_shows_its_traceback(tmp_path):
    argv = [sys.executable, "-m", "mobilegen", "sample", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.png")]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == [res.stderr.strip().splitlines()[-1]]
    debug = subprocess.run([argv[0], "-m", "mobilegen", "--debug", *argv[3:]], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_a_missing_converter_names_the_one_command_that_installs_it(tmp_path):
    hide = "import sys; sys.modules['onnx2tf'] = None; from mobilegen.cli import export_cli; export_cli()"
    res = subprocess.run([sys.executable, "-c", hide, "tflite", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{sys.executable} -m pip install --no-deps --ignore-requires-python onnx2tf==2.6.9" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [["verify", "{dir}", "--guidance", "nan"], ["serve", "--max-wait-ms", "nan"], ["serve", "--timeout-s", "nan"],
     ["tflite", "--prune", "nan"]],
    ids=["verify-guidance", "serve-max-wait", "serve-timeout", "tflite-prune"],
)  # fmt: skip
def test_every_float_option_refuses_nan(tmp_path, args):
    cli = main_cli if args[0] == "serve" else export_cli
    res = run(cli, *[a.replace("{dir}", str(tmp_path)) for a in args])
    assert res.exit_code == 2 and "is not a finite number" in res.output + res.stderr
    for command in (*export_cli.commands.values(), *main_cli.commands.values()):
        floats = [p.name for p in command.params if isinstance(p.type, click.types.FloatParamType)]
        assert all(isinstance(p.type, FiniteFloat) for p in command.params if p.name in floats), command.name


def test_option_types_refuse_what_the_library_would_refuse():
    finite, unbounded = FiniteFloat(0, 50), FiniteFloat(0, min_open=True, allow_inf=True)
    assert finite.convert("3.5", None, None) == 3.5 and unbounded.convert("inf", None, None) == float("inf")
    for bad, kind in (("nan", finite), ("inf", finite), ("nan", unbounded), ("-inf", unbounded), ("51", finite)):
        with pytest.raises(click.BadParameter):
            kind.convert(bad, None, None)
    assert Seed().convert(str(2**63 - 1), None, None) == 2**63 - 1
    with pytest.raises(click.BadParameter, match="not in 0..9223372036854775807"):
        Seed().convert(str(2**63), None, None)


def test_a_config_is_built_from_the_options_that_are_its_fields():
    from mobilegen.diffusion import SamplerConfig

    config = config_from(SamplerConfig, {"steps": 7, "scale": 2.0, "out": "x.png"}, renames={"scale": "guidance"}, seed=3)
    assert config == SamplerConfig(steps=7, guidance=2.0, seed=3)
