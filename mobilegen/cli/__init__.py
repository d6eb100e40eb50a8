"""Command-line shells: parse options, build a config, call one library function, map the
result to an exit code (cli/core.py says how errors become exit codes).

Heavy libraries (torch, onnx, onnx2tf, LiteRT) are imported inside the commands so that
``--help`` is instant.
"""

from __future__ import annotations

from mobilegen.cli import export, main, measure, serve
from mobilegen.cli.core import FiniteFloat, group


@group("mobilegen-export: checkpoints -> verified ONNX and TFLite denoisers (x, t, y) -> eps.")
def export_cli(debug: bool) -> None:
    pass


@group("mobilegen: sample, train, distill, prune and serve MobileGen models (docs/training.md, docs/serving.md).")
def main_cli(debug: bool) -> None:
    pass


export.register(export_cli)
export_cli.add_command(main.sample_command)
main.register(main_cli)
serve.register(main_cli)
measure.register(export_cli, main_cli)

__all__ = ["FiniteFloat", "export_cli", "main_cli"]
