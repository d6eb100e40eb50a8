"""Data-free distillation from the untrained default v2 at a tenth of its channels (every head
kept) into the tiny v2 (--init): the teacher's trajectories are generated once and cached, the
student's loss falls, an interrupt anywhere resumes exactly, the CLI works without --data,
another teacher's cache is refused; heads chosen by ablation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import narrow_checkpoint, tiny_checkpoint

from mobilegen.cli import main_cli
from mobilegen.compress import weakest_heads
from mobilegen.diffusion import linear_schedule
from mobilegen.errors import MobileGenError
from mobilegen.models.checkpoint import load_checkpoint, save_checkpoint, seeded_model
from mobilegen.train import TrainConfig, train
from mobilegen.train.teacher_data import INDEX, TeacherBatch, distillation_loss, x0_factor

TEACHER_STEPS = (2,)  # DDIM-2, guided and unguided: 62 teacher inputs, seconds on 2 cores
RUNS = ["ddim2-g0-seed0", "ddim2-g3-seed0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """helpers.narrow_checkpoint: every head kept, so the prune test removes half of them."""
    return narrow_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """Where the students start (--init): the tiny v2."""
    return tiny_checkpoint(tmp_path_factory.mktemp("student") / "student.pt")


@pytest.fixture(scope="module")
def config(student):
    def make(teacher: Path, out: Path, **kw) -> TrainConfig:
        base = dict(arch="student_v2", seed=1, epochs=1000, batch_size=2, device="cpu", checkpoint_every=0, ema_start=1,
                    lr=2e-3, label_dropout=0.0, teacher_steps=TEACHER_STEPS, init=student)  # fmt: skip
        return TrainConfig(out=out, teacher=teacher, **{**base, **kw})

    return make


def with_cache(source: Path, out: Path) -> Path:
    """A run folder that starts with the teacher trajectories another run cached."""
    shutil.copytree(source / "teacher", out / "teacher")
    return out


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def first(teacher, config, tmp_path_factory):
    """30 data-free steps from scratch: the trajectories are generated into OUT/teacher/."""
    out = tmp_path_factory.mktemp("first") / "run"
    return out, train(config(teacher, out, max_steps=30))


@pytest.mark.slow  # the teacher's trajectories: ~25 s
def test_trajectories_are_generated_cached_and_hold_the_teachers_eps(teacher, first):
    out, result = first
    assert result.teacher_runs == (RUNS, []) and result.teacher_inputs == 2 * 20 + 2 * 11
    index = json.loads((out / "teacher" / INDEX).read_text())
    assert index["teacher"]["sha256"] == load_checkpoint(teacher).sha256 and sorted(index["runs"]) == RUNS
    guided = torch.load(out / "teacher" / "ddim2-g3-seed0.pt", weights_only=True)
    assert set(guided["t"].tolist()) == {999.0, 1.0} and (guided["y"] == -1).sum() == 20  # the unconditional halves
    assert guided["finals"].shape == (10, 3, 64, 64) and guided["final_y"].tolist() == list(range(10))
    unguided = torch.load(out / "teacher" / "ddim2-g0-seed0.pt", weights_only=True)
    assert unguided["final_y"].tolist() == [*range(10), -1]
    model = load_checkpoint(teacher).model
    with torch.no_grad():
        eps = model(guided["x"][:4], guided["t"][:4], guided["y"][:4])
    assert torch.allclose(eps, guided["eps"][:4], atol=1e-5), "the recorded eps is the teacher's at the recorded input"


@pytest.mark.slow  # the teacher's trajectories: ~25 s
def test_the_students_loss_falls(first, student):
    out, result = first
    losses = result.losses
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    shard = torch.load(out / "teacher" / "ddim2-g3-seed0.pt", weights_only=True)
    x, t, y, eps = (shard[k][::3] for k in ("x", "t", "y", "eps"))  # 14 of the cached inputs, both timesteps
    trained = load_checkpoint(student).model
    trained.load_state_dict(torch.load(out / "last.pt", weights_only=True)["weights"])
    with torch.no_grad():
        before, after = (float(F.mse_loss(m(x, t, y), eps)) for m in (load_checkpoint(student).model, trained))
    assert after < 0.6 * before, (before, after)  # the tiny student: 0.50 x after 30 steps (an untrained one: 1)


@pytest.mark.slow  # the teacher's trajectories: ~25 s
def test_a_second_run_reads_the_cache_without_generating(teacher, first, config):
    out, _ = first
    before = mtimes(out / "teacher")
    again = train(config(teacher, out, max_steps=1, overwrite=True))
    assert again.teacher_runs == ([], RUNS) and mtimes(out / "teacher") == before


@pytest.mark.slow
def test_an_interrupt_during_generation_or_training_resumes_exactly(teacher, first, config, tmp_path):
    full = train(config(teacher, with_cache(first[0], tmp_path / "full"), max_steps=6))

    def stop_after_first_run(done, total, name):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(teacher, tmp_path / "gen", max_steps=6), on_teacher_run=stop_after_first_run)
    assert sorted(json.loads((tmp_path / "gen" / "teacher" / INDEX).read_text())["runs"]) == RUNS[:1]
    assert torch.load(tmp_path / "gen" / "last.pt", weights_only=True)["step"] == 0
    resumed = train(config(teacher, tmp_path / "gen", max_steps=6, resume=True))
    assert resumed.teacher_runs == (RUNS[1:], RUNS[:1]) and resumed.losses == full.losses

    def stop_at_3(step, end, loss, ips):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(teacher, with_cache(first[0], tmp_path / "cut"), max_steps=6), on_step=stop_at_3)
    with pytest.raises(MobileGenError, match="settings differ.*x0_weight"):
        train(config(teacher, tmp_path / "cut", max_steps=6, resume=True, x0_weight=0.1))
    resumed = train(config(teacher, tmp_path / "cut", max_steps=6, resume=True))
    assert resumed.losses == full.losses[3:]
    for run in ("gen", "cut"):
        a, b = (torch.load(p / "last.pt", weights_only=True) for p in (tmp_path / "full", tmp_path / run))
        assert all(torch.equal(a[k][n], b[k][n]) for k in ("weights", "ema") for n in a[k]), run


@pytest.mark.slow  # the teacher's trajectories: ~25 s
def test_another_teachers_cache_is_refused_in_one_line(first, config, tmp_path):
    other = save_checkpoint(tmp_path / "other.pt", seeded_model(seed=5).model)
    out = with_cache(first[0], tmp_path / "run")
    with pytest.raises(MobileGenError, match="holds trajectories of another teacher"):
        train(config(other, out, max_steps=1))
    res = CliRunner().invoke(
        main_cli, ["distill", "--teacher", str(other), "--teacher-steps", "2", "-o", str(out), "--device", "cpu"]
    )
    assert res.exit_code == 2 and "holds trajectories of another teacher" in res.stderr and "pass --overwrite" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and sorted(p.name for p in out.iterdir()) == ["teacher"]


def test_bad_input_without_data_is_refused(tmp_path, teacher):
    res = CliRunner().invoke(main_cli, ["train", "--arch", "student_v2", "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "no --data" in res.stderr and "mobilegen distill --teacher" in res.stderr
    res = CliRunner().invoke(
        main_cli, ["distill", "--teacher", str(teacher), "--data-fraction", "0.3", "-o", str(tmp_path / "run")]
    )
    assert res.exit_code == 2 and "--data-fraction 0.3" in res.stderr and "needs --data" in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_cli_distill_without_data(teacher, student, tmp_path):
    out = tmp_path / "v2"
    res = CliRunner().invoke(main_cli, ["distill", "--teacher", str(teacher), "--arch", "student_v2", "--init", str(student),
                                        "--teacher-steps", "2",
                                        "--max-steps", "2", "--batch-size", "2", "--x0-weight", "0.01", "-o", str(out),
                                        "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output + res.stderr
    assert "teacher trajectories: 62 inputs from 2 runs (2 generated, 0 read from" in res.output
    assert "fidelity to the teacher (77 parity cases) not measured" in res.output
    loaded = load_checkpoint(out / "ema.pt")
    assert loaded.meta["step"] == 2 and loaded.meta["train_config"]["data"] is None


@pytest.mark.slow
def test_cli_prune_without_data_chooses_heads_by_ablation_and_compares(teacher, first, tmp_path):
    out = with_cache(first[0], tmp_path / "pruned")
    args = ["prune", str(teacher), "--head-ratio", "0.5", "--teacher-steps", "2", "--importance-samples", "4", "--steps", "2",
            "--batch-size", "2", "-o", str(out), "--device", "cpu"]  # fmt: skip
    res = CliRunner().invoke(main_cli, args)
    assert res.exit_code == 0, res.output + res.stderr
    assert "attention heads 16 -> 8" in res.output and "heads by ablation (chosen): removed sa1 [" in res.output
    assert "heads by magnitude: removed sa1 [" in res.output and res.output.count("on the 77 parity cases min") == 2
    assert "0 generated, 2 read from" in res.output and "fine-tuned 2 steps" in res.output
    meta = load_checkpoint(out / "pruned.pt").meta["prune"]
    assert meta["head_importance"] == "ablation" and set(meta["rankings"]) == {"ablation", "magnitude"}
    assert meta["rankings"]["ablation"]["heads_removed"] == weakest_heads(
        meta["ablation_scores"], {b: 2 for b in meta["ablation_scores"]}
    )
    assert load_checkpoint(out / "ema.pt").model.config.widths == load_checkpoint(out / "pruned.pt").model.config.widths != ()
    again = CliRunner().invoke(main_cli, [*args, "--resume"])  # finished: resumes to the same place, nothing redone
    assert again.exit_code == 0 and "fine-tuned 2 steps" in again.output, again.output + again.stderr


def test_the_x0_term_is_the_mse_of_the_x0_predictions():
    gen = torch.Generator().manual_seed(0)
    x, pred, target = (torch.randn(3, 3, 64, 64, generator=gen) for _ in range(3))
    t = torch.tensor([1.0, 500.0, 999.0])
    batch = TeacherBatch(x, t, torch.zeros(3, dtype=torch.long), target, torch.zeros_like(x), torch.zeros(3, dtype=torch.bool))
    ab = torch.from_numpy(linear_schedule().alphas_cumprod)[t.long()].float()
    x0 = lambda e: (x - (1 - ab).sqrt()[:, None, None, None] * e) / ab.sqrt()[:, None, None, None]
    expected = F.mse_loss(pred, target) + 0.5 * F.mse_loss(x0(pred), x0(target))
    assert float(distillation_loss(pred, batch, target, 1.0, 0.5, 0.0)) == pytest.approx(float(expected), rel=1e-4)
    assert 1e-5 < float(x0_factor(t)[0]) < 1e-3 and float(x0_factor(t)[2]) > 1e4
