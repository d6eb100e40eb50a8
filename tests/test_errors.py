"""The domain errors: one base class, and the exit code each maps to."""

from __future__ import annotations

import sys

import pytest

from mobilegen.contract.gates import GateResult
from mobilegen.errors import (
    CheckpointError,
    ExportError,
    GateError,
    InvalidInput,
    ManifestError,
    MissingDependencyError,
    MobileGenError,
    NonFiniteError,
    OutputError,
)


@pytest.mark.parametrize("cls, code", [(InvalidInput, 2), (CheckpointError, 2), (ExportError, 2), (ManifestError, 2),
                                       (OutputError, 2), (NonFiniteError, 1), (GateError, 1)])  # fmt: skip
def test_bad_input_exits_2_an_untrustworthy_result_exits_1(cls, code):
    assert issubclass(cls, MobileGenError) and cls("x").exit_code == code


def test_invalid_input_is_also_a_value_error():
    with pytest.raises(ValueError):
        raise InvalidInput("steps must be >= 1")


def test_a_gate_error_carries_every_result():
    results = [GateResult("parity", "a.onnx"), GateResult("memory", "b.tflite", failures=("too big",))]
    err = GateError("1 gate failed", results)
    assert err.results == tuple(results) and str(err) == "1 gate failed"
    assert GateError("no results").results == ()


def test_a_missing_dependency_names_the_command_that_installs_it():
    onnx2tf = str(MissingDependencyError("onnx2tf", "the tflite command"))
    assert "the tflite command needs the Python package 'onnx2tf'" in onnx2tf
    assert f"{sys.executable} -m pip install --no-deps --ignore-requires-python onnx2tf==2.6.9" in onnx2tf
    assert str(MissingDependencyError("fastapi", "serve")).endswith("install it with: bash scripts/install.sh")
