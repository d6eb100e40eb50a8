"""torchrun data-parallel training on the CPU (gloo), against the single-process run, on the tiny v2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, demo_data, narrow_checkpoint, tiny_checkpoint

from mobilegen.errors import MobileGenError
from mobilegen.train import TrainConfig, train
from mobilegen.train.data import StepSampler
from mobilegen.train.distributed import DistributedStepSampler, World

COMMON = ["--epochs", "1", "--device", "cpu", "--ema-start", "1", "--lr", "1e-3", "--checkpoint-every", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return demo_data(tmp_path_factory.mktemp("ddp") / "cifar", per_class=2)  # 20 training images, no test/ split


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "mobilegen", *args]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def last(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def test_rank_shares_make_up_the_single_process_batch():
    """Each global step: the ranks' (index, seed) pairs, interleaved, are the 1-process batch of N*B."""
    single = list(StepSampler(20, 4, 3, 0, 12))  # 5 steps per epoch: crosses two epoch boundaries
    shares = [list(DistributedStepSampler(20, 2, 3, 0, 12, World(r, 2))) for r in range(2)]
    for step, batch in enumerate(single):
        merged = [shares[p % 2][step][p // 2] for p in range(4)]
        assert merged == batch, step
    resumed = list(DistributedStepSampler(20, 2, 3, 7, 12, World(1, 2)))
    assert resumed == shares[1][7:], "a resumed rank sees the batches the uninterrupted rank would"
    with pytest.raises(MobileGenError, match="cannot fill 2 ranks x --batch-size 16"):
        DistributedStepSampler(20, 16, 3, 0, 1, World(0, 2))


@pytest.mark.slow
def test_two_ranks_match_one_process_with_twice_the_batch(data, tmp_path):
    steps, init = 3, tiny_checkpoint(tmp_path / "tiny.pt")
    single = train(TrainConfig(data=data, out=tmp_path / "one", arch="student_v2", epochs=1, batch_size=4, device="cpu",
                               checkpoint_every=0, ema_start=1, lr=1e-3, seed=3, max_steps=steps, init=init))  # fmt: skip
    res = torchrun("train", "--arch", "student_v2", "--init", str(init), "--data", str(data), "-o", str(tmp_path / "two"),
                   "--batch-size", "2", "--max-steps", str(steps), *COMMON)  # fmt: skip
    assert res.stdout.count("wrote ") == 1, "only rank 0 reports"
    one, two = last(tmp_path / "one"), last(tmp_path / "two")
    assert two["step"] == steps
    for key in ("weights", "ema"):
        worst = max(float((one[key][k] - two[key][k]).abs().max()) for k in one[key])
        assert worst <= 1e-6, (key, worst)
    digests = two["ranks_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1], "the ranks hold the same weights bit for bit"
    assert f"last loss {single.losses[-1]:.4f}" in res.stdout, (single.losses, res.stdout)


@pytest.mark.slow
def test_resume_under_torchrun_continues_exactly(data, tmp_path):
    teacher = tiny_checkpoint(tmp_path / "tiny.pt")  # the teacher, and the student's start
    args = ["distill", "--teacher", str(teacher), "--arch", "student_v2", "--init", str(teacher), "--data", str(data),
            "--batch-size", "2", *COMMON]  # fmt: skip
    torchrun(*args, "-o", str(tmp_path / "full"), "--max-steps", "2")
    torchrun(*args, "-o", str(tmp_path / "cut"), "--max-steps", "1")
    assert last(tmp_path / "cut")["step"] == 1
    torchrun(*args, "-o", str(tmp_path / "cut"), "--max-steps", "2", "--resume")
    full, cut = last(tmp_path / "full"), last(tmp_path / "cut")
    assert cut["step"] == 2 and full["ranks_sha256"] == cut["ranks_sha256"]
    for key in ("weights", "ema"):
        assert all(torch.equal(full[key][k], cut[key][k]) for k in full[key]), key


@pytest.mark.slow
def test_prune_under_torchrun_writes_once_and_fine_tunes_data_parallel(data, tmp_path):
    teacher = narrow_checkpoint(tmp_path / "narrow.pt")
    res = torchrun("prune", str(teacher), "--ratio", "0.25", "--data", str(data), "--steps", "2", "--batch-size", "2",
                   "--device", "cpu", "-o", str(tmp_path / "pruned"))  # fmt: skip
    assert res.stdout.count("params ") == 1, res.stdout
    state = last(tmp_path / "pruned")
    assert state["step"] == 2 and len(set(state["ranks_sha256"])) == 1
    assert (tmp_path / "pruned" / "pruned.pt").is_file() and (tmp_path / "pruned" / "ema.pt").is_file()
