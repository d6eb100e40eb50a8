"""One base class for every error a user can cause; the CLI maps them to exit codes.
Anything else that escapes a command is a bug: it keeps its traceback (exit 1)."""

import sys


class MobileGenError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 2


class InvalidInput(MobileGenError, ValueError):
    """A value outside what is allowed (an option, a config field, an argument); the message names both."""


class CheckpointError(MobileGenError):
    """A checkpoint that cannot be read, is unsafe, or does not match any architecture."""


class ExportError(MobileGenError):
    """An export stage failed (converter missing or broken, output folder in the way)."""


class ManifestError(MobileGenError):
    """A manifest.json (or a file it lists) that does not follow the export contract."""


class NonFiniteError(MobileGenError):
    """A computation turned NaN or Inf: its result is not trustworthy, and nothing was written."""

    exit_code = 1


class OutputError(MobileGenError):
    """An output path in the way: it exists, it is an input, or it is not ours to replace."""


class GateError(MobileGenError):
    """A verification gate failed: the artifact is not trustworthy. Carries every gate's
    result (contract.gates.GateResult), whose summaries the CLI prints before the message."""

    exit_code = 1

    def __init__(self, message: str, results: tuple = ()):
        super().__init__(message)
        self.results = tuple(results)


# The one command that completes an install for a package pip leaves out. onnx2tf 2.6.9
# declares Python >= 3.12 (pyproject.toml installs it there); it runs on 3.11 as well.
INSTALL = {
    "onnx2tf": "-m pip install --no-deps --ignore-requires-python onnx2tf==2.6.9",
    "ray": "-m pip install 'ray[serve]==2.60.0'",
}


class MissingDependencyError(MobileGenError):
    """A dependency is not installed; the message gives the command that installs it."""

    def __init__(self, package: str, purpose: str):
        command = f"{sys.executable} {INSTALL[package]}" if package in INSTALL else "bash scripts/install.sh"
        super().__init__(f"{purpose} needs the Python package {package!r}, which is not installed; install it with: {command}")


class MissingRuntimeError(MobileGenError):
    """A phone runtime (LiteRT's GPU accelerator on lavapipe, ARM64 LiteRT under qemu) is not set up."""

    def __init__(self, runtime: str, missing: str):
        super().__init__(
            f"the {runtime} target needs {missing}, which is not set up here; set it up with: bash scripts/install.sh"
        )


class TargetError(MobileGenError):
    """A phone runtime could not open or run a file (the message carries the runtime's own log line)."""
