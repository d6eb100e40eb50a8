"""The training loop: loss falls, resume equals an uninterrupted run, QAT, distillation, and
train -> distill -> export end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import demo_data, tiny_checkpoint
from PIL import Image

from mobilegen.cli import export_cli, main_cli
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.errors import MobileGenError, OutputError
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.train.loop import TrainConfig, Trainer, train
from mobilegen.train.trainer import diffusion_batch, step_generator

TINY = "tiny.pt"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """20 training images, no test/ split: the runs here check losses and weights, not validation;
    beside them the tiny v2 the runs start from (TINY)."""
    root = tmp_path_factory.mktemp("data")
    tiny_checkpoint(root / TINY)
    return demo_data(root / "cifar", per_class=2)


def config(data: Path, out: Path, **kw) -> TrainConfig:
    """A run on data that starts from the tiny v2 (--init) beside it."""
    base = dict(arch="student_v2", epochs=1, batch_size=2, device="cpu", checkpoint_every=0, ema_start=1, lr=1e-3,
                init=data.parent / TINY)  # fmt: skip
    return TrainConfig(data=data, out=out, **{**base, **kw})


def weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_loss_goes_down_on_a_fixed_batch(data, tmp_path):
    """On the default v2 (seeded): the tiny one learns this batch too slowly to show it in 12 steps."""
    trainer = Trainer(
        config(data, tmp_path / "r", lr=2e-3, label_dropout=0.0, init=None), total_steps=12, device=torch.device("cpu")
    )
    x0 = Image.new("RGB", (64, 64), (200, 30, 30))
    batch = torch.stack([torch.from_numpy(np.asarray(x0, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1] * 2)
    y = torch.tensor([0, 0])
    losses = [trainer.train_step(batch, y, step_generator(0, 0)) for _ in range(12)]
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses


@pytest.mark.slow
def test_resume_after_interrupt_equals_an_uninterrupted_run(data, tmp_path):
    full = train(config(data, tmp_path / "full", max_steps=4))
    assert full.step == 4

    def interrupt(step, end, loss, ips):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "cut", max_steps=4), on_step=interrupt)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 2
    assert not list((tmp_path / "cut").glob(".*tmp")), "no half-written checkpoint"
    with pytest.raises(OutputError, match="last.pt already exists; pass --resume to continue the run, --overwrite"):
        train(config(data, tmp_path / "cut", max_steps=4))
    with pytest.raises(MobileGenError, match="settings differ.*lr"):
        train(config(data, tmp_path / "cut", max_steps=4, resume=True, lr=5e-4))
    resumed = train(config(data, tmp_path / "cut", max_steps=4, resume=True))
    assert resumed.step == 4 and resumed.losses == full.losses[2:]
    for key in ("weights", "ema"):
        a, b = weights(tmp_path / "full" / "last.pt", key), weights(tmp_path / "cut" / "last.pt", key)
        assert all(torch.equal(a[k], b[k]) for k in a), key


@pytest.mark.slow
def test_qat_rounds_weights_to_float16(data, tmp_path):
    train(config(data, tmp_path / "qat", max_steps=2, qat_every=1))
    for key, path in (("weights", "last.pt"), ("weights", "ema.pt")):
        for v in weights(tmp_path / "qat" / path, key).values():
            assert torch.equal(v, v.half().float())


@pytest.mark.slow
def test_distillation_uses_the_teacher_once_in_eval_mode(data, tmp_path):
    teacher = tiny_checkpoint(tmp_path / "teacher.pt")
    cfg = config(data, tmp_path / "v2", teacher=teacher, noise_weight=0.0)
    trainer = Trainer(cfg, total_steps=4, device=torch.device("cpu"))
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    x0, y = torch.zeros(2, 3, 64, 64), torch.tensor([1, 2])
    x_t, t, _, y_drop = diffusion_batch(x0, y, step_generator(0, 0), cfg.label_dropout)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(trainer.model(x_t, t, y_drop), trainer.teacher(x_t, t, y_drop))
    # with the noise term off, the loss is exactly MSE(teacher, student)
    assert trainer.train_step(x0, y, step_generator(0, 0)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_train_distill_export_end_to_end(tmp_path):
    """The issue's three commands on a generated folder; the export passes the TFLite gates. The
    student starts from the tiny v2 (--init: its widths and weights), so its export takes seconds."""
    data = demo_data(tmp_path / "cifar", per_class=2, test_per_class=1)  # validation on 10 held-out images
    runner = CliRunner()
    res = runner.invoke(main_cli, ["train", "--data", str(data), "--arch", "teacher", "--epochs", "1", "--batch-size", "2",
                                   "--max-steps", "1", "-o", str(tmp_path / "teacher"), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output + res.stderr
    assert "images/s" in res.output and "validation eps-MSE" in res.output
    init = tiny_checkpoint(tmp_path / "tiny.pt")
    res = runner.invoke(main_cli, ["distill", "--teacher", str(tmp_path / "teacher" / "ema.pt"), "--arch", "student_v2",
                                   "--init", str(init), "--data", str(data), "--epochs", "1", "--batch-size", "2",
                                   "--max-steps", "2", "-o", str(tmp_path / "v2"), "--device", "cpu", "--qat-every", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output + res.stderr
    loaded = load_checkpoint(tmp_path / "v2" / "ema.pt")
    assert loaded.arch == "student_v2" and loaded.meta["step"] == 2
    assert loaded.model.config.widths == load_checkpoint(init).model.config.widths != ()
    res = runner.invoke(
        export_cli, ["tflite", str(tmp_path / "v2" / "ema.pt"), "--fp16", "--no-bench", "-o", str(tmp_path / "art")]
    )
    assert res.exit_code == 0, res.output + res.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["source"]["sha256"] == loaded.sha256
    assert set(CIFAR10_LABELS) == set(manifest["labels"])


def test_init_of_another_architecture_is_refused_before_anything_is_written(tmp_path):
    data = demo_data(tmp_path / "cifar", per_class=1)
    init = tiny_checkpoint(tmp_path / "tiny.pt")  # a student_v2
    res = CliRunner().invoke(main_cli, ["train", "--data", str(data), "--arch", "teacher", "--init", str(init),
                                        "-o", str(tmp_path / "run"), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 2 and "holds a student_v2, but the run is for teacher" in res.stderr, res.output + res.stderr
    assert not (tmp_path / "run").exists()
