"""Structured pruning: narrower UNets that still run, load, describe themselves and export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from helpers import run_export
from PIL import Image

from mobilegen.cli import export_cli, main_cli
from mobilegen.compress import count_macs, count_params, prune_channels
from mobilegen.errors import CheckpointError
from mobilegen.models import UNet, UNetConfig
from mobilegen.models.checkpoint import expected_shapes, load_checkpoint, save_checkpoint
from mobilegen.train import write_demo_folder

UNUSED_BY_V2 = ("down3.", "sa3.", "up1.", "sa4.")


@pytest.fixture(scope="module")
def pruned(v2_model):
    return prune_channels(v2_model, 0.25, head_ratio=0.5)


def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=gen), torch.tensor([1.0, 500.0, 999.0]), torch.tensor([3, -1, 8])


def test_pruned_model_runs_and_the_three_attention_impls_agree(pruned):
    outs = {}
    with torch.no_grad():
        for impl in ("sdpa", "math", "original"):
            outs[impl] = pruned.set_attention(impl)(*inputs())
    pruned.set_attention("sdpa")
    scale = outs["sdpa"].abs().max()
    assert outs["sdpa"].shape == (3, 3, 64, 64) and torch.isfinite(outs["sdpa"]).all()
    for impl in ("math", "original"):
        assert (outs[impl] - outs["sdpa"]).abs().max() <= 1e-5 * scale, impl
    assert [pruned.get_submodule(n).mha.num_heads for n in ("sa1", "sa2", "sa5", "sa6")] == [2, 2, 2, 2]


def test_modules_v2_never_applies_keep_their_widths(pruned):
    original = expected_shapes("student_v2")
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    unused = [k for k in original if k.startswith(UNUSED_BY_V2)]
    assert unused and all(shapes[k] == original[k] for k in unused)
    assert not any(name.startswith(UNUSED_BY_V2) for name, _ in pruned.config.widths)


def test_whole_heads_leave_inside_the_attention_and_cost_what_silencing_them_costs(v2_model):
    choice = {"sa1": [0, 3], "sa2": [1, 2], "sa5": [2, 3], "sa6": [1, 3]}
    heads_only = prune_channels(v2_model, 0.0, head_ratio=0.5, heads=choice)
    silenced = copy.deepcopy(v2_model)
    with torch.no_grad():
        for name, heads in choice.items():
            mha = silenced.get_submodule(name).mha
            for h in heads:
                mha.out_proj.weight[:, h * mha.head_dim : (h + 1) * mha.head_dim] = 0
        assert torch.allclose(heads_only(*inputs()), silenced(*inputs()), atol=1e-5)
    for name, heads in choice.items():
        a, b = v2_model.get_submodule(name).mha, heads_only.get_submodule(name).mha
        d, kept = a.head_dim, [h for h in range(4) if h not in heads]
        cols = [h * d + i for h in kept for i in range(d)]
        assert (b.embed_dim, b.num_heads, b.head_dim) == (a.embed_dim, 2, d)  # the residual stream keeps its width
        assert dict(heads_only.config.widths)[f"{name}.mha"] == (a.embed_dim, 2, d)
        big, small = a.in_proj_weight.view(3, a.embed_dim, -1), b.in_proj_weight.view(3, 2 * d, -1)
        assert torch.equal(small, big[:, cols]) and torch.equal(b.out_proj.weight, a.out_proj.weight[:, cols])
        assert torch.equal(b.out_proj.bias, a.out_proj.bias)
    with pytest.raises(ValueError, match="already removed"):
        prune_channels(heads_only, 0.25)


def test_macs_count_attention_and_drop_with_pruning(v2_model):
    # Golden: convolutions, linear layers and the attention matmuls of one v2 step at batch 1.
    assert count_macs(v2_model) == 4_768_530_432
    sa6 = 2 * 4096 * 4096 * 64  # QK^T and attention x V of the 64x64 block alone
    assert count_macs(v2_model) > sa6 + 2_000_000_000
    half = prune_channels(v2_model, 0.5)
    assert 2.4 < count_macs(v2_model) / count_macs(half) < 2.8  # convs ~1/4, attention matmuls ~1/2
    heads = prune_channels(v2_model, 0.0, head_ratio=0.5)
    assert 1.35 < count_macs(v2_model) / count_macs(heads) < 1.5  # attention's projections and matmuls; convs untouched
    assert count_macs(v2_model) / count_macs(prune_channels(v2_model, 0.0, head_ratio=0.75)) > 1.7  # 1.79: sa6 is most of it
    assert count_params(half) < count_params(v2_model) / 3
    assert count_params(v2_model, only_used=False) > count_params(v2_model)  # v2 carries unused modules


def test_pruned_checkpoint_describes_its_widths_and_loads_strictly(tmp_path, pruned):
    assert "widths" not in UNetConfig().to_dict()  # unpruned configs unchanged
    path = save_checkpoint(tmp_path / "pruned.pt", pruned)
    loaded = load_checkpoint(path)  # weights_only, strict
    assert loaded.model.config == pruned.config and loaded.model.widths() == pruned.widths()
    with torch.no_grad():
        assert torch.equal(loaded.model(*inputs()), pruned(*inputs()))
    torch.save(pruned.state_dict(), tmp_path / "plain.pt")  # no description: the usual clear error
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="does not have"):
        UNet(UNetConfig(widths={"nonsense.layer": [1, 2]}))
    with pytest.raises(ValueError, match="divisible by heads"):
        UNet(UNetConfig(widths={"sa6.mha": [30, 4]}))
    with pytest.raises(ValueError, match="heads x head_dim <= embed"):
        UNet(UNetConfig(widths={"sa6.mha": [64, 3, 32]}))


def test_ratio_out_of_range_is_refused(v2_model):
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        prune_channels(v2_model, 1.0)


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


@pytest.mark.slow
def test_pruned_checkpoint_exports_through_the_normal_pipeline(tmp_path, pruned):
    ckpt = save_checkpoint(tmp_path / "pruned.pt", pruned)
    out = tmp_path / "export"
    run_export("tflite", ckpt, "--fp16", "--no-bench", "-o", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "passed"
    assert manifest["model"]["config"]["widths"]["sa6.mha"] == [48, 2, 12]  # 0.25 of 64 channels, then 2 of 4 heads
    assert all(manifest["parity"][name]["passed"] for name in manifest["parity"])


def test_real_v2_chosen_setting_cuts_macs(real_v2):
    model = load_checkpoint(real_v2).model
    pruned = prune_channels(model, 0.1, head_ratio=0.5)
    assert count_macs(model) / count_macs(pruned) >= 1.5


@pytest.mark.slow
def test_compare_measures_every_variant_side_by_side(tmp_path, pruned):
    """`mobilegen-export compare`: the issue's table, every row measured in one run."""
    ckpt = save_checkpoint(tmp_path / "pruned.pt", pruned)
    out = tmp_path / "cmp"
    args = ["compare", "--pruned", str(ckpt), "-o", str(out), "--classes", "ship", "--steps", "3",
            "--calibration-samples", "22", "--rounds", "1", "--image-rounds", "1", "--threads", "2"]  # fmt: skip
    res = CliRunner().invoke(export_cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "compare.json").read_text())
    rows = result["variants"]
    assert list(rows) == ["fp32", "fp16", "int8 dynamic", "int8 full", "fp32, unbounded attention", "structured-pruned fp32"]
    assert rows["fp32"]["step_psnr_db"]["min"] > 80 and rows["fp32"]["latency"]["speedup_vs_fp32"] == 1.0
    assert rows["int8 dynamic"]["bytes"] < 0.35 * rows["fp32"]["bytes"]
    assert rows["structured-pruned fp32"]["macs_per_step"] < rows["fp32"]["macs_per_step"] / 1.5
    for row in rows.values():
        assert row["latency"]["calls"] == 10 and row["latency"]["p90_ms"] >= row["latency"]["median_ms"] > 0
    for name in ("fp32", "fp32, unbounded attention"):  # the same network, run by the same runtime
        assert rows[name]["trajectory"]["min_ssim"] > 0.999 and rows[name]["trajectory"]["min_psnr_db"] > 60, name
    assert result["pytorch_sdpa_latency"]["median_ms"] > 0 and result["threads"] == 2
    assert all(row["image_ms"]["calls"] == 1 and row["image_ms"]["median_ms"] > 0 for row in rows.values())
    assert result["commit"] and result["machine"]["flags"] is not None
    assert "| int8 full |" in (out / "compare.md").read_text()
    assert Image.open(out / "samples.png").size[1] > 6 * 64  # a row per variant, plus the reference
