"""The server's routes module: one JSON shape for every error, and the routes it names."""

from __future__ import annotations

import json

from mobilegen.serve.routes import ROUTES, json_error


def test_an_error_is_a_json_object_with_its_status_and_extra_fields():
    response = json_error(413, "request body over 1 MB", {"Connection": "close"}, limit_bytes=2**20)
    assert response.status_code == 413 and response.media_type == "application/json"
    assert response.headers["connection"] == "close"
    assert json.loads(response.body) == {"error": "request body over 1 MB", "status": 413, "limit_bytes": 2**20}


def test_the_routes_named_in_404s_are_the_ones_the_api_serves():
    assert ROUTES == ("/generate_image", "/v1/images", "/v1/models", "/healthz", "/metrics")
