"""Checkpoint loading: every wrapping the original code produced, safely."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from probe import probe_state_dict
from safetensors.torch import save_file

from mobilegen.errors import CheckpointError
from mobilegen.models import ARCHS
from mobilegen.models.checkpoint import load_checkpoint, save_checkpoint, seeded_model


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("arch", ARCHS)
def test_raw_state_dict_loads_strictly_and_detects_arch(tmp_path, arch):
    path = tmp_path / "ckpt.pt"
    torch.save(probe_state_dict(arch), path)
    loaded = load_checkpoint(path)
    assert loaded.arch == arch
    assert torch.equal(loaded.model.state_dict()["label_emb.weight"], probe_state_dict(arch)["label_emb.weight"])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3, "optimizer": {"lr": 1e-3}},
        lambda sd: {"ema": sd, "model": {k: torch.zeros_like(v) for k, v in sd.items()}},
        lambda sd: {"ema_model": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict", "model+extras", "ema-preferred", "ema_model+module.", "_orig_mod.+module."],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_wrapped_and_prefixed_checkpoints_load(tmp_path, wrap, suffix):
    model = seeded_model("student_v1", seed=3).model
    path = tmp_path / f"ckpt{suffix}"
    torch.save(wrap(model.state_dict()), path)
    loaded = load_checkpoint(path)
    assert loaded.arch == "student_v1"
    assert same_weights(loaded.model, model)


def test_safetensors_loads(tmp_path):
    model = seeded_model("teacher", seed=1).model
    path = tmp_path / "teacher.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_checkpoint(path)
    assert loaded.arch == "teacher" and same_weights(loaded.model, model)


def test_our_checkpoints_describe_themselves(tmp_path):
    model = seeded_model("student_v2", seed=5).model
    ema = seeded_model("student_v2", seed=6).model
    path = save_checkpoint(tmp_path / "run" / "ema.pt", model, ema=ema, step=12)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "mobilegen-checkpoint" and raw["format_version"] == 1
    assert raw["arch"] == "student_v2" and raw["config"]["arch"] == "student_v2" and raw["step"] == 12
    loaded = load_checkpoint(path)
    assert same_weights(loaded.model, ema), "the EMA copy is preferred for sampling and export"
    assert loaded.meta["step"] == 12


def test_arch_override_must_match(tmp_path):
    path = tmp_path / "v2.pt"
    torch.save(probe_state_dict("student_v2"), path)
    assert load_checkpoint(path, arch="student_v2").arch == "student_v2"
    with pytest.raises(CheckpointError, match="do not match architecture 'teacher'"):
        load_checkpoint(path, arch="teacher")


class Boom:
    def __reduce__(self):
        return (Path.touch, (Path(MARKER),))


MARKER = ""


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": probe_state_dict("student_v2"), "payload": Boom()}, path)
    with pytest.raises(CheckpointError, match="would execute code"):
        load_checkpoint(path)
    assert not Path(MARKER).exists()


def test_plain_pickle_file_is_refused_and_never_runs(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Boom()))
    assert not Path(MARKER).exists()  # pickling ran nothing
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not Path(MARKER).exists(), "loading ran the pickled payload"


def test_truncated_file(tmp_path, v2_checkpoint):
    path = tmp_path / "cut.pt"
    path.write_bytes(v2_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_non_checkpoint_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(path)


def test_wrong_architecture_names_keys_and_nearest(tmp_path):
    sd = probe_state_dict("student_v2")
    del sd["outc.bias"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "nearest is 'student_v2'" in msg and "outc.bias" in msg and "extra.weight" in msg


def test_tensor_dict_without_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"config": {"lr": 1}}, path)
    with pytest.raises(CheckpointError, match="no UNet weights found"):
        load_checkpoint(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported extension"):
        load_checkpoint(tmp_path / "w.bin")


def test_real_v2_weights_load_strictly(real_v2):
    loaded = load_checkpoint(real_v2)
    assert loaded.arch == "student_v2"
    assert loaded.sha256 == "091c4755d1ce28c3aa8ce944a47142cb1d2765985253d50e3f9243032bb29df7"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    sd = probe_state_dict("student_v2")
    sd["sa2.mha.in_proj_weight"][3, 5] = value
    path = tmp_path / "bad.pt"
    torch.save({"ema_model": {f"module.{k}": v for k, v in sd.items()}}, path)
    with pytest.raises(CheckpointError, match=r"'sa2\.mha\.in_proj_weight' holds 1 NaN/Inf"):
        load_checkpoint(path)


def test_float64_weights_beyond_float32_range_are_refused(tmp_path):
    sd = {k: v.double() for k, v in probe_state_dict("student_v1").items()}
    sd["outc.bias"][0] = 1e300  # finite in float64, Inf once cast to the float32 the model runs in
    path = tmp_path / "big.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"'outc\.bias' holds 1 NaN/Inf value\(s\) \(as float32\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_weights_are_refused(tmp_path, dtype):
    """An int64 .safetensors used to be cast to float32 silently and exported as 'passed'."""
    sd = {k: (v * 100).to(dtype) for k, v in probe_state_dict("student_v2").items()}
    path = tmp_path / "ints.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=rf"has dtype {str(dtype).removeprefix('torch.')}; UNet weights must be floating point"):
        load_checkpoint(path)


def test_half_precision_weights_still_load(tmp_path):
    sd = {k: v.half() for k, v in probe_state_dict("student_v2").items()}
    path = tmp_path / "half.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert all(v.dtype == torch.float32 for v in loaded.model.state_dict().values())


def zip_bomb(path: Path, declared: int) -> Path:
    """A real torch.save archive whose tensor record is `declared` bytes of deflated zeros (~1/500 on disk)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", compresslevel=1) as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info, src.read(info))
                continue
            record = zipfile.ZipInfo(info.filename)
            record.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(record, "w") as fh:
                for _ in range(declared >> 20):
                    fh.write(bytes(1 << 20))
    return path


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_zip_bomb_is_refused_from_its_declared_sizes_before_inflating(tmp_path):
    """torch.load inflates every record before it checks one (1.2 GB of RSS for a 1 MB file
    declaring 1 GB): the zip directory's declared sizes are checked first."""
    bomb = zip_bomb(tmp_path / "bomb.pt", 512 << 20)
    assert bomb.stat().st_size < 4e6
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's)
    code = ("import re, sys\nfrom mobilegen.models.checkpoint import load_checkpoint\ntry:\n    load_checkpoint(sys.argv[1])\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) >> 10)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    error, rss_mb = out.strip().splitlines()
    assert error.startswith("CheckpointError") and "refused before reading any tensor" in error, error
    assert "declare 537 MB of tensor data" in error and "zip bomb" in error
    assert int(rss_mb) < 450, f"peak RSS {rss_mb} MB: the record was inflated"
