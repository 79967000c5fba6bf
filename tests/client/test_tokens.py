"""One signer of key-signed tokens (issue 18): the client's ``sign_token`` and the server's token
exchange both go through ``client.tokens.sign_token_at``, so a client-signed token has the same
bytes as the server's and as @statebacked/token's for the same inputs."""

from __future__ import annotations

import base64
import json

import pytest

import server.exchange
from client import sign_token
from client.tokens import sign_token_at
from server.exchange import KeyRecord, verify_key_token

KEY_ID = "sbk_client-test"
SECRET = "sbsec_0123456789abcdefghijklmnopqrstuvwxyz"
KEY = KeyRecord(KEY_ID, "org_1", SECRET, ("events.write",))
NOW = 1_795_848_800


def test_the_server_signs_with_the_clients_signer():
    assert server.exchange.sign_token is sign_token_at


@pytest.mark.parametrize("act", [{"sub": "u1"}, {"q": "a?b>c~d\x7fe", "u": "ünïcødé ✓"}, {"?" * 5: ["~", ">"]}])
def test_client_tokens_are_the_same_bytes_and_atob_safe(act):
    token = sign_token(KEY_ID, SECRET, act, expires_in_s=600, now_s=NOW)
    assert token == sign_token_at(KEY_ID, SECRET, act, expires_at_s=NOW + 600, issued_at_s=NOW)
    payload = token.split(".")[1]
    assert "-" not in payload and "_" not in payload  # a browser's atob reads it as it is
    assert json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["exp"] == NOW + 600
    assert verify_key_token(token, KEY, NOW)["act"] == act


def test_an_empty_issuer_means_the_default_one():
    token = sign_token(KEY_ID, SECRET, {}, issuer="", now_s=NOW)
    assert verify_key_token(token, KEY, NOW)["iss"] == f"https://{KEY_ID}.client.statebacked.dev/"


def test_claims_that_are_not_json_are_refused():
    with pytest.raises(ValueError, match=r"(?i)out of range|nan"):
        sign_token(KEY_ID, SECRET, {"x": float("nan")}, now_s=NOW)
