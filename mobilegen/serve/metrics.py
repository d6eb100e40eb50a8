"""Prometheus metrics for one server (its own registry, so several apps can share a process)."""

from __future__ import annotations

from mobilegen.errors import MissingDependencyError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CALL_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise MissingDependencyError("prometheus-client", "the server's /metrics endpoint") from None
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "mobilegen_http_requests",
            "HTTP requests by route, method and status code",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mobilegen_http_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "mobilegen_http_errors",
            "Error responses by route and kind (validation, too_large, timeout, busy, not_found, internal, ...)",
            ["route", "kind"],
            registry=registry,
        )
        self.in_progress = Gauge("mobilegen_http_requests_in_progress", "Requests being handled", registry=registry)
        self.images = Counter("mobilegen_images_generated", "Images returned, by model", ["model"], registry=registry)
        self.batch_size = Histogram(
            "mobilegen_batch_size",
            "Images (denoiser rows) per model call; guidance doubles a request's rows",
            ["model"],
            buckets=ROW_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "mobilegen_batch_requests",
            "Requests' denoiser calls merged into one model call",
            ["model"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.model_seconds = Histogram(
            "mobilegen_model_call_duration_seconds",
            "Time of one (batched) model call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "mobilegen_denoiser_calls_dropped",
            "Queued denoiser calls of cancelled requests (client gone, timeout) dropped before they ran",
            ["model"],
            registry=registry,
        )

    def on_batch(self, model: str, rows: int, calls: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(rows)
        self.batch_requests.labels(model).observe(calls)
        self.model_seconds.labels(model).observe(seconds)

    def on_drop(self, model: str, calls: int) -> None:
        self.dropped.labels(model).inc(calls)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
