"""The request fingerprint of the ``Idempotency-Key`` middleware (``body_fingerprint``)
over real HTTP — the suite's uvicorn server (``idem_http_app``, two workers) on an
embedded SQLite key-value store — and directly: JSON numbers are compared as they were
written (not as binary floats), and a body whose canonical form UTF-8 cannot encode is
fingerprinted by its bytes instead of failing the request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from multistore.consistency._idempotency_http import body_fingerprint
from tests.consistency.test_idempotency_http import Server, _serve, new_key, replayed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("adversary-idem")
    with _serve(f"sqlite:///{tmp / 'idem.db'}", "kv", tmp) as running:
        yield running


def test_two_amounts_that_round_to_one_float_are_two_payloads(server: Server) -> None:
    """ "The same key with another fingerprint is 422" and canonical_json makes "the
    same JSON sent with other spacing or member order" one request. 0.1 and
    0.10000000000000001 are two numbers (an app that reads amounts as decimals sees
    two amounts), not the same JSON re-spaced, yet the second request under the key
    gets the first one's response as a replay."""
    key = new_key()
    headers = [("content-type", "application/json")]
    first = server.post(key=key, content=b'{"amount": 0.1}', headers=headers)
    assert first.status_code == 201
    second = server.post(key=key, content=b'{"amount": 0.10000000000000001}', headers=headers)
    assert not replayed(second)
    assert second.status_code == 422


def test_a_json_body_utf8_cannot_encode_is_fingerprinted_by_its_bytes(server: Server) -> None:
    """A JSON body that cannot be put in canonical form is fingerprinted by "the raw
    bytes otherwise". ``{"note": "\\ud800"}`` is valid JSON syntax (a lone surrogate
    escape); the canonical text cannot be encoded as UTF-8 and the error escapes the
    middleware: every attempt is a 500 and the request never runs."""
    key = new_key()
    headers = [("content-type", "application/json")]
    response = server.post(key=key, content=b'{"note": "\\ud800"}', headers=headers)
    assert response.status_code == 201, response.text
    assert len(server.executions(key)) == 1


JSON = "application/json"


def _fp(body: bytes) -> str:
    return body_fingerprint(body, JSON, None, canonical_json=True)


def test_numbers_are_compared_as_written_and_only_layout_is_ignored() -> None:
    same = [
        b'{"amount": 0.1, "items": [1, {"b": true, "a": null}]}',
        b'{ "items" : [ 1 , { "a" : null , "b" : true } ] , "amount" : 0.1 }\n',
    ]
    assert len({_fp(body) for body in same}) == 1
    assert _fp(same[0]).startswith("json:")
    others = [
        b'{"amount": 0.10000000000000001, "items": [1, {"b": true, "a": null}]}',
        b'{"amount": 0.10, "items": [1, {"b": true, "a": null}]}',
        b'{"amount": 1e-1, "items": [1, {"b": true, "a": null}]}',
        b'{"amount": 0.1, "items": [1.0, {"b": true, "a": null}]}',
        b'{"amount": "0.1", "items": [1, {"b": true, "a": null}]}',
        b'{"amount": 0.1, "items": [1, {"b": "true", "a": null}]}',
    ]
    assert len({_fp(body) for body in [same[0], *others]}) == 1 + len(others)
    # integers past a double's precision stay distinct too
    assert _fp(b"[9007199254740993]") != _fp(b"[9007199254740992]")
    # an escape and the character it stands for are one string
    assert _fp(b'["\\u00e9"]') == _fp('["\u00e9"]'.encode())


def test_a_body_without_a_canonical_form_is_fingerprinted_by_its_bytes() -> None:
    for body in [
        b'{"note": "\\ud800"}',  # a lone surrogate: UTF-8 cannot encode it
        b'{"a": 1, "a": 2}',  # duplicate names
        b'{"a": NaN}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
        b"not json",
    ]:
        assert _fp(body) == "raw:" + hashlib.sha256(body).hexdigest(), body[:20]
    assert _fp(b'{"note": "\\ud800"}') != _fp(b'{"note": "\\udc00"}')
