"""Request validation, over HTTP: every bad or hostile value is a 422 naming the field and
saying what is allowed, never a 5xx, and the server keeps answering."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serving import assert_healthy, metrics, total

BAD_JSON = [
    ({"label": "unicorn"}, "label"),
    ({"label": "cat", "version": "7"}, "version"),
    ({"label": "cat", "steps": 0}, "steps"),
    ({"label": "cat", "steps": 21}, "steps"),
    ({"label": "cat", "n": 5}, "n"),
    ({"label": "cat", "n": 10**30}, "n"),
    ({"label": "cat", "guidance": 51}, "guidance"),
    ({"label": "cat", "guidance": -0.5}, "guidance"),
    ({"label": "cat", "sampler": "euler"}, "sampler"),
    ({"label": "cat", "sampler": "ddpm"}, "sampler"),  # 999 steps > max_steps 20
    ({"label": "cat", "steps": "5"}, "steps"),
    ({"label": "cat", "steps": 2.5}, "steps"),
    ({"label": "cat", "n": True}, "n"),
    ({"label": "cat", "seed": -1}, "seed"),
    ({"label": "cat", "output": "gif"}, "output"),
]


@pytest.mark.parametrize("payload,field", BAD_JSON)
def test_bad_json_request_gets_422_naming_the_field(url, payload, field):
    res = httpx.post(f"{url}/v1/images", json=payload)
    assert res.status_code == 422, res.text
    body = res.json()
    assert body["status"] == 422 and body["error"]
    assert [p["field"] for p in body["problems"]] == [field]


# Values a hostile client sends. "²" and "³" pass str.isdigit() but int() rejects them; "٣" (Arabic-Indic
# three) and "𝟗" (mathematical bold nine) pass both, so int() silently reads them as 3 and 9. Raw JSON
# constants (NaN, Infinity) are parsed by Python's json module into floats.
UNICODE_DIGITS = ["²", "³", "٣", "𝟗", "½", "Ⅻ", "١٢"]
NOT_AN_INT = [*UNICODE_DIGITS, "1", "", " ", "\x00", "0x1", "+1", "1e3", 1.5, -1, 2**63, 10**30, -(10**30),
              True, False, [], {}, [1], {"a": 1}, "NaN", "NaN!", "Infinity!", "-Infinity!", "1e400!"]  # fmt: skip
NOT_A_NUMBER = [*UNICODE_DIGITS, "1", "", -1, 10**400, 1e300, True, [], {}, "NaN!", "Infinity!", "-Infinity!", "1e400!"]
NOT_A_NAME = [*UNICODE_DIGITS, "\x00", "x" * 2000, 1, -1, 1.5, True, [], {}, "NaN!", "Infinity!"]
HOSTILE_JSON = {
    "label": [*UNICODE_DIGITS, "", " ", "\x00", "cat\x00", "unicorn", "10", "-2", "+1", "1.0", "0x1", 10, -2, 10**30,
              1.5, True, False, None, [], {}, ["cat"], "NaN!", "Infinity!", "x" * 5000],
    "version": [*UNICODE_DIGITS, "9", "v9", "v²", "\x00", 99, -1, 1.5, True, [], {}, "NaN!", "Infinity!"],
    "seed": NOT_AN_INT,
    "steps": [*NOT_AN_INT, 0, 21],
    "n": [*NOT_AN_INT, 0, 5],
    "guidance": [*NOT_A_NUMBER, 51, -0.5],
    "eta": [*NOT_A_NUMBER, 1.5, -0.1],
    "sampler": [*NOT_A_NAME, "DDIM", "euler", ""],
    "output": [*NOT_A_NAME, "PNG", "gif", ""],
}
HOSTILE_FORM = {
    "text": [*UNICODE_DIGITS, "\x00", "unicorn", "10", "-2", "+1", "1.0"],
    "version": [*UNICODE_DIGITS, "9", "v²", "\x00"],
    "seed": [*UNICODE_DIGITS, "-1", "1.5", "1e3", "abc", "+1", "0x1", "9" * 30, "", " "],
}


def json_body(field: str, value) -> bytes:
    """{"label": "cat", field: value}; a string ending in "!" is a raw JSON constant (NaN, Infinity, 1e400)."""
    body = {"label": "cat", field: value}
    if isinstance(value, str) and value.endswith("!"):
        return json.dumps({**body, field: "@"}).replace('"@"', value[:-1]).encode()
    return json.dumps(body).encode()


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_hostile_values_in_every_field_get_422_naming_the_field(url):
    """Every field of both endpoints, a table of hostile values each: 422 with the field named, never 5xx."""
    cases = [(f"/v1/images {f}={v!r}", lambda f=f, v=v: httpx.post(f"{url}/v1/images", content=json_body(f, v),
              headers={"content-type": "application/json"}), f) for f, vs in HOSTILE_JSON.items() for v in vs]  # fmt: skip
    for field, values in HOSTILE_FORM.items():
        for value in values:
            form = {"text": "cat", field: value}
            cases.append((f"form {field}={value!r}", lambda d=form: httpx.post(f"{url}/generate_image", data=d), field))
            files = {k: (None, v) for k, v in form.items()}
            cases.append((f"multipart {field}={value!r}", lambda d=files: httpx.post(f"{url}/generate_image", files=d), field))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda case: case[1](), cases))
    wrong = []
    for (name, _, field), res in zip(cases, responses):
        body = res.json() if res.headers.get("content-type") == "application/json" else {}
        fields = [p.get("field") for p in body.get("problems", [])]
        if res.status_code != 422 or field not in fields or not body.get("error"):
            wrong.append(f"{name}: {res.status_code} {res.text[:120] if body else res.headers.get('content-type')}")
    assert not wrong, f"{len(wrong)} of {len(cases)} hostile requests not a 422 naming the field:\n" + "\n".join(wrong)
    assert total(metrics(url)["mobilegen_http_requests_total"], status="500") == 0
    assert_healthy(url)


def test_422_lists_allowed_values_and_server_still_answers(url):
    label = httpx.post(f"{url}/v1/images", json={"label": "unicorn"}).json()["problems"][0]
    assert label["allowed"][:10] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert "auto" in label["allowed"]
    version = httpx.post(f"{url}/generate_image", data={"text": "cat", "version": "1"})
    assert version.status_code == 422 and version.json()["problems"][0]["allowed"] == ["v2"]
    assert httpx.post(f"{url}/generate_image", data={"text": "unicorn", "version": "2"}).status_code == 422
    assert httpx.post(f"{url}/generate_image", data={"version": "2"}).status_code == 422
    assert_healthy(url)


def test_a_repeated_field_is_refused_not_read_twice(url):
    """Python's json keeps the last of a repeated key, other parsers the first: one request, two readings."""
    res = httpx.post(f"{url}/v1/images", content=b'{"label": "cat", "label": "dog"}', headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == "label", res.text
    assert "more than once" in res.json()["error"]
    for send in (lambda d: httpx.post(f"{url}/generate_image", content=d, headers={"content-type": "application/x-www-form-urlencoded"}),
                 lambda d: httpx.post(f"{url}/generate_image", files=[("text", (None, "cat")), ("text", (None, "dog"))])):  # fmt: skip
        res = send(b"text=cat&text=dog")
        assert res.status_code == 422 and res.json()["problems"][0]["field"] == "text", res.text
        assert "given 2 times" in res.json()["error"]


@pytest.mark.parametrize("field, allowed", [("steps", "1..20"), ("seed", "0..9223372036854775807"), ("guidance", "0..50"),
                                            ("label", "use a class name")])  # fmt: skip
def test_a_5000_digit_number_gets_a_422_that_says_what_is_allowed(url, field, allowed):
    body = b'{"label": "cat", "%s": %s}' % (field.encode(), b"9" * 5000)
    if field == "label":
        body = b'{"label": %s}' % (b"9" * 5000)
    res = httpx.post(f"{url}/v1/images", content=body, headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == field, res.text
    assert allowed in res.json()["error"] and "an integer of 5000 digits" in res.json()["error"]
