"""`mobilegen soak-serve` (serve/soak.py): one short real storm against a real server process on
127.0.0.1, RSS sampled throughout, the batching factor read from /metrics."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from mobilegen.cli.serve import soak_serve_command
from mobilegen.serve.soak import level_until, soak_request


def test_requests_are_mixed_and_seeded():
    rng, again = random.Random(0), random.Random(0)
    a = [soak_request(rng, i, 4) for i in range(20)]
    assert a == [soak_request(again, i, 4) for i in range(20)]
    assert {r["n"] for r in a} <= {1, 2, 4} and {r["steps"] for r in a} <= {1, 2, 3} and len({r["output"] for r in a}) == 2
    rng = random.Random(1)
    assert max(soak_request(rng, i, 2)["n"] for i in range(50)) == 2


def test_the_level_is_the_peak_while_the_first_requests_ran():
    samples = [(0.1, 0, 100.0), (0.2, 2, 130.0), (0.3, 4, 120.0), (0.4, 5, 500.0)]
    assert level_until(samples, 4) == 130.0


@pytest.mark.slow  # about 25 s on 2 cores: a server process, 20 warm-up and 12 storm requests
def test_a_short_soak_of_the_real_server(tmp_path):
    out = tmp_path / "soak.json"
    args = ["--requests", "12", "--clients", "3", "--level-at", "4", "--idle-s", "1", "--steps", "1", "--hangup", "0.25",
            "--json", str(out)]  # fmt: skip
    res = CliRunner().invoke(soak_serve_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["plan"]["requests"] == 12 and sum(result["outcomes"].values()) == 12
    assert set(result["outcomes"]) <= {"200", "hung up"} and result["outcomes"].get("200", 0) >= 1
    rss = result["rss_mb"]
    assert 50 < rss["started"] <= rss["after_warmup"] and rss["level_first_4"] > 0 and rss["idle"] > 0
    assert len(result["samples"]) >= 2 and all(n <= 12 for _, n, _ in result["samples"])
    b = result["batching"]
    assert b["model_calls"] >= 1 and b["rows_per_call"] >= 1 and b["requests_per_call"] >= 1
    assert "batching:" in res.output and "RSS MB:" in res.output
