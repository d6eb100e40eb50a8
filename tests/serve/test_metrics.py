"""The server's Prometheus metrics (serve/metrics.py): its own registry, read back by the parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mobilegen.serve.metrics import Metrics


def samples(metrics: Metrics) -> dict:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body.decode())
            for s in f.samples}  # fmt: skip


def test_batches_and_drops_are_counted_per_model_in_separate_registries():
    a, b = Metrics(), Metrics()  # two apps in one process: no "Duplicated timeseries"
    a.on_batch("v2", rows=6, calls=3, seconds=0.2)
    a.on_batch("v2", rows=2, calls=1, seconds=0.1)
    a.on_drop("v2", 4)
    s = samples(a)
    v2 = (("model", "v2"),)
    assert s[("mobilegen_batch_size_sum", v2)] == 8 and s[("mobilegen_batch_size_count", v2)] == 2
    assert s[("mobilegen_batch_requests_sum", v2)] == 4
    assert s[("mobilegen_denoiser_calls_dropped_total", v2)] == 4
    assert s[("mobilegen_batch_size_bucket", (("le", "2.0"), ("model", "v2")))] == 1
    assert ("mobilegen_batch_size_count", v2) not in samples(b)
