"""`mobilegen` as a user meets it: sample, demo-data, serve and the training commands' refusals."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from helpers import one_line
from PIL import Image
from probe import probe_state_dict

from mobilegen.cli import export_cli, main_cli
from mobilegen.cli.main import sample_command
from mobilegen.models.checkpoint import save_checkpoint, seeded_model
from mobilegen.train import write_demo_folder


def run(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sample_default_model_writes_png(tmp_path):
    out = tmp_path / "cat.png"
    res = run(main_cli, "sample", "--label", "cat", "--steps", "2", "--seed", "0", "-o", out)
    assert res.exit_code == 0, res.output
    assert "untrained" in res.stderr and "ms/step" in res.output
    assert Image.open(out).size == (64, 64)


def test_sample_grid_from_checkpoint_with_alias_label(tmp_path, v2_checkpoint):
    out = tmp_path / "grid.png"
    res = run(export_cli, "sample", v2_checkpoint, "--label", "auto", "--n", "4", "--steps", "2", "--device", "cpu", "-o", out)
    assert res.exit_code == 0, res.output
    assert "automobile x4" in res.output
    assert Image.open(out).size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)


def test_sample_is_reproducible(tmp_path, v2_checkpoint):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert run(main_cli, "sample", v2_checkpoint, "--steps", "3", "--seed", "5", "-o", out).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_unknown_label_lists_allowed_values(tmp_path):
    res = run(main_cli, "sample", "--label", "unicorn", "--steps", "1", "-o", tmp_path / "x.png")
    assert res.exit_code == 2
    assert "unknown label 'unicorn'" in res.stderr and "airplane" in res.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("seed", ["-1", "9223372036854775808", "1180591620717411303424"])
def test_a_seed_outside_what_the_server_allows_is_refused(tmp_path, seed):
    res = run(main_cli, "sample", "--seed", seed, "--steps", "1", "-o", tmp_path / "x.png")
    assert res.exit_code == 2 and "0..9223372036854775807" in res.output and not (tmp_path / "x.png").exists()


def test_the_largest_seed_samples(tmp_path):
    assert run(main_cli, "sample", "--seed", str(2**63 - 1), "--steps", "1", "-o", tmp_path / "x.png").exit_code == 0


@pytest.mark.parametrize("name, fmt", [("x.jpg", "JPEG"), ("x.JPEG", "JPEG"), ("x.webp", "WEBP"), ("x.png", "PNG")])
def test_sample_writes_the_format_its_extension_names(tmp_path, name, fmt):
    res = run(main_cli, "sample", "--steps", "1", "-o", tmp_path / name)
    assert res.exit_code == 0, res.output + res.stderr
    assert Image.open(tmp_path / name).format == fmt


@pytest.mark.parametrize("name", ["x.txt", "x", "x.gif.bak"])
def test_sample_refuses_an_extension_it_cannot_write_before_any_work(tmp_path, name):
    assert "cannot tell the image format" in one_line(run(main_cli, "sample", "--steps", "1", "-o", tmp_path / name))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["--label", "unicorn"], ["missing.pt"]])
def test_no_progress_bar_before_the_input_is_checked(tmp_path, args):
    res = run(main_cli, "sample", *args, "--steps", "1", "-o", tmp_path / "x.png")
    assert "denoising" not in res.stderr and "error:" in one_line(res)


@pytest.mark.parametrize("option, value", [("--guidance", "nan"), ("--eta", "nan"), ("--guidance", "inf"), ("--eta", "-inf")])
def test_non_finite_sampling_options_are_refused(tmp_path, option, value):
    """click's FloatRange lets NaN through every bound; these used to write a black PNG."""
    out = tmp_path / "x.png"
    res = run(main_cli, "sample", option, value, "--steps", "1", "-o", out)
    assert res.exit_code == 2 and "is not a finite number" in res.output + res.stderr, res.output
    assert not out.exists()


def test_nan_weights_are_refused_by_sample_with_the_tensor_named(tmp_path):
    sd = probe_state_dict("student_v2")
    sd["outc.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    out = tmp_path / "x.png"
    res = run(main_cli, "sample", path, "--steps", "1", "-o", out)
    assert res.exit_code == 2 and "'outc.weight' holds 1 NaN/Inf" in res.stderr and res.stderr.count("\n") == 1
    assert not out.exists()


def test_a_model_that_overflows_stops_sampling_with_exit_1_and_no_png(tmp_path):
    """Finite weights whose eps overflows float32: the sampler state turns Inf, the run stops."""
    sd = probe_state_dict("student_v2")
    sd["outc.bias"][:] = 3e38
    path = tmp_path / "overflow.pt"
    torch.save(sd, path)
    out = tmp_path / "x.png"
    res = run(main_cli, "sample", path, "--steps", "3", "--guidance", "0", "-o", out)
    assert res.exit_code == 1, res.output + res.stderr
    assert "sampler state turned NaN/Inf at timestep 999" in res.stderr and "Traceback" not in res.output + res.stderr
    assert not out.exists()


def test_nan_weights_are_refused_by_serve_before_it_listens(tmp_path):
    sd = probe_state_dict("student_v2")
    sd["label_emb.weight"][7, 1] = float("inf")
    path = tmp_path / "inf.pt"
    torch.save(sd, path)
    res = run(main_cli, "serve", path, "--port", "0")
    assert res.exit_code == 2 and "'label_emb.weight' holds 1 NaN/Inf" in res.stderr


def test_sample_refuses_an_existing_output_and_never_overwrites_its_input(tmp_path, v2_checkpoint):
    before = v2_checkpoint.read_bytes()
    for extra in ((), ("--overwrite",)):  # `sample ckpt.pt -o ckpt.pt` once turned a checkpoint into a PNG
        res = run(main_cli, "sample", v2_checkpoint, "--steps", "1", "-o", v2_checkpoint, *extra)
        assert res.exit_code == 2 and "is an input of this command" in res.stderr, res.output + res.stderr
    assert v2_checkpoint.read_bytes() == before
    out = tmp_path / "cat.png"
    out.write_bytes(b"mine")
    res = run(main_cli, "sample", "--steps", "1", "-o", out)
    assert res.exit_code == 2 and f"{out} already exists; pass --overwrite" in res.stderr and out.read_bytes() == b"mine"
    assert run(main_cli, "sample", "--steps", "1", "-o", out, "--overwrite").exit_code == 0
    assert Image.open(out).size == (64, 64) and sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "v2.pt"]


def test_demo_data_replaces_only_a_folder_it_wrote(tmp_path):
    out = tmp_path / "data"
    assert run(main_cli, "demo-data", out, "--per-class", "1").exit_code == 0
    res = run(main_cli, "demo-data", out, "--per-class", "1")
    assert res.exit_code == 2 and "already exists; pass --overwrite" in res.stderr
    assert run(main_cli, "demo-data", out, "--per-class", "2", "--overwrite").exit_code == 0
    assert len(list((out / "train" / "cat").iterdir())) == 2
    (out / "train" / "cat" / "my_photo.jpg").write_bytes(b"precious")
    res = run(main_cli, "demo-data", out, "--overwrite")
    assert res.exit_code == 2 and "train/cat/my_photo.jpg, which demo-data does not write" in res.stderr
    assert (out / "train" / "cat" / "my_photo.jpg").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "no staging folder left"


def test_train_distill_and_prune_never_overwrite_an_input_or_a_run_without_overwrite(tmp_path):
    data = write_demo_folder(tmp_path / "data", per_class=1)
    run_dir = tmp_path / "run"
    ema = save_checkpoint(run_dir / "ema.pt", seeded_model().model)
    before = ema.read_bytes()
    common = ("--data", data, "-o", run_dir, "--max-steps", "1", "--batch-size", "2")
    res = run(main_cli, "train", "--arch", "student_v2", *common)
    assert res.exit_code == 2 and "ema.pt already exists; pass --resume to continue the run, --overwrite to start it over" in res.stderr
    res = run(main_cli, "distill", "--teacher", ema, *common, "--overwrite")
    assert res.exit_code == 2 and "is an input of this command" in res.stderr
    res = run(main_cli, "prune", ema, "--ratio", "0.3", "--data", data, "--steps", "0", "-o", run_dir, "--overwrite")
    assert res.exit_code == 2 and "is an input of this command" in res.stderr
    assert ema.read_bytes() == before and [p.name for p in run_dir.iterdir()] == ["ema.pt"]


def test_the_sample_command_checks_its_options_before_any_work(tmp_path):
    """The sample command on its own (not through the group): Click checks its options first."""
    res = CliRunner().invoke(sample_command, ["--n", "0", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--n" in res.output and not (tmp_path / "x.png").exists()
