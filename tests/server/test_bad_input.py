"""Regression tests for the 5xx the API fuzzer (tests/fuzz) found: each malformed body is a 400
``invalid-parameter`` naming the body, and the server logs no traceback."""

from __future__ import annotations

import logging

import pytest

from tests.server.api_support import Api

BOUNDARY = "fuzzboundary"


async def _post(api: Api, path: str, content_type: str, data: bytes) -> tuple[int, dict]:
    async with api.client.post(path, data=data, headers={"content-type": content_type}) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("content_type", "data", "problem"),
    [
        # the previous fuzz run's 500: a multipart content type without a boundary
        ("multipart/form-data", b"grant_type=x", "boundary"),
        # form fields that are not UTF-8
        ("application/x-www-form-urlencoded", b"\xff\xfe=%ff", "utf-8"),
    ],
)
async def test_token_exchange_with_an_unparseable_form_is_a_400(
    api: Api, caplog: pytest.LogCaptureFixture, content_type: str, data: bytes, problem: str
):
    with caplog.at_level(logging.ERROR, logger="statehost.http"):
        status, body = await _post(api, "/tokens", content_type, data)
    assert status == 400, body
    assert body["code"] == "invalid-parameter" and body["parameter"] == "body"
    assert content_type.split(";")[0] in body["error"] and problem in body["error"].lower()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_code_upload_whose_part_header_is_not_http_is_a_400(api: Api, caplog: pytest.LogCaptureFixture):
    """Found by the fuzzer: a multipart field name with raw non-ASCII bytes (aiohttp's InvalidHeader)."""
    status, _ = await api.call("POST", "/machines", body={"slug": "m"})
    assert status == 201
    status, provisional = await api.call("POST", "/machines/m/v")
    assert status == 200
    path = "/code-uploads/" + provisional["codeUploadUrl"].rsplit("/code-uploads/", 1)[1]
    # the part's header line carries a control byte inside the quoted name
    data = (
        f"--{BOUNDARY}\r\n".encode()
        + b'Content-Disposition: form-data; name="\xc2\x9d\x02\xc3\xb1"\r\n\r\nv\r\n'
        + f"--{BOUNDARY}--\r\n".encode()
    )
    with caplog.at_level(logging.ERROR, logger="statehost.http"):
        status, body = await _post(api, path, f"multipart/form-data; boundary={BOUNDARY}", data)
    assert status == 400, body
    assert body["code"] == "invalid-parameter" and body["parameter"] == "body"
    assert "multipart upload could not be parsed" in body["error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # the upload URL still works for a well-formed upload afterwards: nothing was consumed
    assert await api.upload(provisional, b"export default 1;", filename="m.js", gzipped=False) == 204


async def test_code_upload_without_a_boundary_is_a_400(api: Api):
    assert (await api.call("POST", "/machines", body={"slug": "m"}))[0] == 201
    status, provisional = await api.call("POST", "/machines/m/v")
    assert status == 200
    path = "/code-uploads/" + provisional["codeUploadUrl"].rsplit("/code-uploads/", 1)[1]
    status, body = await _post(api, path, "multipart/form-data", b"--x\r\n")
    assert (status, body["code"], body["parameter"]) == (400, "invalid-parameter", "body"), body
    assert "boundary" in body["error"]


@pytest.mark.parametrize("use", [[], {}, 1.5, None])
async def test_a_key_whose_use_is_not_a_string_is_a_400(api: Api, use):
    """Found by the fuzzer: ``use`` of an unhashable type reached a dict lookup (TypeError, 500)."""
    status, body = await api.call("POST", "/keys", body={"name": "k", "use": use})
    assert (status, body["code"], body["parameter"]) == (400, "invalid-parameter", "use"), body


@pytest.mark.parametrize(
    ("path", "body", "parameter"),
    [
        ("/keys", '{"name": "k\\udb8f", "use": "ci"}', "name"),
        ("/orgs", '{"name": "\\ud800"}', "name"),
        ("/org-members", '{"email": "\\udfff@example.com", "role": "read"}', "email"),
        ("/machines/m", '{"slug": "i1", "context": {"a": "\\ud800"}}', "context"),
        ("/machines/m/i/i1/events", '{"event": {"type": "go", "x": "\\ud800"}}', "event"),
    ],
)
async def test_lone_surrogates_in_json_strings_are_a_400(api: Api, path: str, body: str, parameter: str):
    """JSON may escape a lone UTF-16 surrogate (\\ud800), which no UTF-8 text (SQLite, PostgreSQL,
    the sandbox) can hold: the body is refused, naming where the surrogate is."""
    await api.deploy("m")
    assert (await api.call("POST", "/machines/m", body={"slug": "i1"}))[0] == 200
    status, answer = await api.call("POST", path, data=body)
    assert status == 400, answer
    assert answer["code"] == "invalid-parameter" and "surrogate" in answer["error"], answer
