"""`mobilegen prune` (train/prune.py): bad ratios and missing data refused before any work; a pruned,
fine-tuned run that is never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mobilegen.cli import main_cli
from mobilegen.errors import InvalidInput
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.train import write_demo_folder
from mobilegen.train.prune import PruneConfig


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_demo_folder(tmp_path_factory.mktemp("data") / "cifar", per_class=1)


def prune_cli(*args):
    return CliRunner().invoke(main_cli, ["prune", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("bad, message", [
    (("--ratio", "1.5"), "--ratio must be in [0, 1)"),
    (("--ratio", "-0.1"), "--ratio must be in [0, 1)"),
    (("--head-ratio", "1"), "--head-ratio must be in [0, 1)"),
    ((), "nothing to prune"),
])  # fmt: skip
def test_cli_bad_ratios_fail_cleanly(tmp_path, v2_checkpoint, tiny_data, bad, message):
    res = prune_cli(v2_checkpoint, *bad, "--data", tiny_data, "-o", tmp_path / "run")
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "run").exists()


def test_cli_missing_data_fails_before_writing(tmp_path, v2_checkpoint):
    res = prune_cli(v2_checkpoint, "--ratio", "0.3", "--data", tmp_path / "nowhere", "-o", tmp_path / "run")
    assert res.exit_code == 2 and "not a folder" in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_cli_prunes_fine_tunes_and_refuses_to_overwrite(tmp_path, v2_checkpoint, tiny_data):
    out = tmp_path / "run"
    res = prune_cli(v2_checkpoint, "--ratio", "0.3", "--head-ratio", "0.5", "--data", tiny_data, "--steps", "2",
                    "--batch-size", "2", "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "MACs per step 4.769 G ->" in res.output and "attention heads 16 -> 8" in res.output
    ema = load_checkpoint(out / "ema.pt")
    assert ema.model.config.widths == load_checkpoint(out / "pruned.pt").model.config.widths != ()
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    again = prune_cli(v2_checkpoint, "--ratio", "0.3", "--data", tiny_data, "--steps", "1", "-o", out)
    assert again.exit_code == 2 and "pruned.pt already exists; pass --overwrite" in again.output


@pytest.mark.parametrize("kw, message", [(dict(ratio=1.0), "--ratio must be in"), (dict(head_ratio=-0.1), "--head-ratio must be in"),
                                         (dict(), "nothing to prune"), (dict(ratio=0.3, steps=-1), "--steps must be >= 0"),
                                         (dict(ratio=0.3, head_importance="random"), "expected one of ablation, magnitude"),
                                         (dict(ratio=0.3, importance_samples=0), "--importance-samples")])  # fmt: skip
def test_prune_settings_are_checked(kw, message):
    with pytest.raises(InvalidInput, match=message):
        PruneConfig(Path("ema.pt"), **kw)
