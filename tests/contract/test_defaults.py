"""One home for the defaults (contract/defaults.py): every CLI option that has a library twin
defaults to the same value as contract.defaults and the library's dataclasses, so the CLI and
the library cannot disagree."""

from __future__ import annotations

import dataclasses

import click
import pytest

from mobilegen.cli.export import bench_command, compare_command, onnx_command, report_command, tflite_command, verify_command
from mobilegen.contract import defaults
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.build import BuildOptions
from mobilegen.jobs.export import ExportOptions


def default(command: click.Command, name: str):
    """The value the command gets for option `name` from a command line without it (Click's defaults, processed)."""
    assert name in {p.name for p in command.params}, name
    return command.make_context(command.name, [], resilient_parsing=True).params[name]


def field_default(cls, name: str):
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@pytest.mark.parametrize("command", [onnx_command, tflite_command], ids=["onnx", "tflite"])
def test_export_commands_default_to_the_contract(command):
    assert default(command, "batch") == defaults.BATCH == field_default(ExportOptions, "batch") == DenoiserSpec().batch
    assert default(command, "max_tensor_mb") is None  # None: the library applies defaults.TENSOR_MB x batch
    assert field_default(ExportOptions, "max_tensor_mb") is None


def test_each_command_exports_the_layout_the_contract_names():
    assert default(onnx_command, "layout") == defaults.LAYOUT["onnx"] == DenoiserSpec().layout
    assert field_default(ExportOptions, "layout") == defaults.LAYOUT["tflite"]  # the tflite command's, its main use
    assert "layout" not in {p.name for p in tflite_command.params}, "tflite files are NHWC: not an option"


def test_tflite_options_default_to_the_build_options():
    build = BuildOptions()
    assert default(tflite_command, "fp16") is defaults.FP16 is build.fp16 is False  # --fp16 opts in
    assert default(tflite_command, "prune") == defaults.PRUNE == field_default(ExportOptions, "prune")
    assert default(tflite_command, "calibration_samples") == defaults.CALIBRATION_SAMPLES == build.calibration_size
    assert default(compare_command, "calibration_samples") == defaults.CALIBRATION_SAMPLES
    assert build.tensor_mb == defaults.TENSOR_MB and build.int8 == () and default(tflite_command, "int8") == ()


def test_read_only_commands_default_to_the_contract():
    assert default(bench_command, "repeats") == defaults.BENCH_REPEATS
    for command in (verify_command, report_command, compare_command):
        assert default(command, "classes") == defaults.CLASSES, command.name


def test_the_checker_sees_a_disagreement(monkeypatch):
    """The comparisons above read the live objects: a changed default shows."""
    monkeypatch.setattr(defaults, "BENCH_REPEATS", defaults.BENCH_REPEATS + 1)
    assert default(bench_command, "repeats") != defaults.BENCH_REPEATS


def test_the_cli_lists_exactly_the_targets_the_runtime_has():
    from mobilegen.cli.main import sample_command
    from mobilegen.runtime.targets import TARGETS

    assert defaults.TARGET_NAMES == tuple(TARGETS)
    (option,) = [p for p in sample_command.params if p.name == "target"]
    assert tuple(option.type.choices) == defaults.TARGET_NAMES
