from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mobilegen.checkpoint import seeded_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_V2 = SHARED / "models" / "mobilegen_v2_student.pt"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def real_v2() -> Path:
    if not REAL_V2.is_file():
        pytest.skip(f"real v2 weights not found at {REAL_V2} (../shared/models is absent on this checkout)")
    return REAL_V2


@pytest.fixture(scope="session")
def v2_model():
    return seeded_model("student_v2").model


@pytest.fixture()
def v2_checkpoint(tmp_path, v2_model) -> Path:
    path = tmp_path / "v2.pt"
    torch.save(v2_model.state_dict(), path)
    return path
