"""ServeConfig and --model parsing refuse what the server cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilegen.errors import MobileGenError
from mobilegen.serve import ModelSource, ServeConfig, parse_model_option
from mobilegen.serve.app import create_app


def test_config_is_validated():
    twice = (ModelSource(None, "a"), ModelSource(None, "a"))
    for bad in (dict(steps=300), dict(max_n=0), dict(sampler="ddpm"), dict(guidance=-1), dict(device="tpu"),
                dict(cors_origins=("app.example/path",)), dict(models=twice)):  # fmt: skip
        with pytest.raises(MobileGenError):
            ServeConfig(**bad)
    for bad in ("v1", "=x.pt", "bad name=x.pt"):
        with pytest.raises(MobileGenError):
            parse_model_option(bad)
    assert parse_model_option("v1=runs/v1.pt") == ModelSource(Path("runs/v1.pt"), "v1")
    with pytest.raises(MobileGenError, match="not found"):
        create_app(ServeConfig(models=(ModelSource(Path("/nonexistent/ckpt.pt")),)))
