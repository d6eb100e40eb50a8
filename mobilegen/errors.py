"""One base class for every error a user can cause; the CLI maps them to exit codes."""


class MobileGenError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 2


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
    """A verification gate failed: the artifact is not trustworthy."""

    exit_code = 1


class MissingDependencyError(MobileGenError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package {package!r}, which is not installed; "
            "run the install command from the README (it installs every dependency)"
        )
