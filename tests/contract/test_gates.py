"""GateResult: the one result every gate returns."""

from __future__ import annotations

import json

from mobilegen.contract.gates import GateResult, failed


def test_a_result_passes_only_without_failures_and_says_so():
    ok = GateResult("parity", "denoiser.onnx", figures={"min_psnr_db": 91.5})
    bad = GateResult("memory", "denoiser_float32.tflite", failures=("peak RSS 80 MB > 64 MB", "largest tensor 5 MB"))
    assert ok.passed and not bad.passed
    assert ok.summary() == "PASS parity denoiser.onnx"
    assert bad.summary() == "FAIL memory denoiser_float32.tflite: peak RSS 80 MB > 64 MB; largest tensor 5 MB"
    assert failed([ok, bad, ok]) == [bad]


def test_the_gates_own_text_wins_and_to_dict_is_json():
    result = GateResult("trajectory", "export", figures={"min_ssim": 0.97}, text="PASS trajectory: 2 classes")
    assert result.summary() == "PASS trajectory: 2 classes"
    assert json.loads(json.dumps(result.to_dict())) == {"gate": "trajectory", "subject": "export", "passed": True,
                                                         "failures": [], "figures": {"min_ssim": 0.97}}  # fmt: skip
