"""Cases where the ``Idempotency-Key`` middleware breaks what docs/consistency/idempotency.md
states, over real HTTP: the suite's uvicorn server (``idem_http_app``, two workers) on
an embedded SQLite key-value store. Each is marked ``xfail(strict=True)`` until fixed.

Both come from the canonical-JSON fingerprint (``body_fingerprint``): JSON numbers are
compared after conversion to binary floats, and a string that UTF-8 cannot encode is
not caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consistency.test_idempotency_http import Server, _serve, new_key, replayed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("adversary-idem")
    with _serve(f"sqlite:///{tmp / 'idem.db'}", "kv", tmp) as running:
        yield running


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="body_fingerprint parses JSON numbers as floats: two different amounts that "
    "round to one double are one payload, so the second is replayed instead of 422",
)
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
    assert second.status_code == 422  # fails: 201, replayed


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="body_fingerprint encodes the canonical JSON outside its try: a string with "
    "a lone surrogate escape raises UnicodeEncodeError out of the middleware (500)",
)
def test_a_json_body_utf8_cannot_encode_is_fingerprinted_by_its_bytes(server: Server) -> None:
    """A JSON body that cannot be put in canonical form is fingerprinted by "the raw
    bytes otherwise". ``{"note": "\\ud800"}`` is valid JSON syntax (a lone surrogate
    escape); the canonical text cannot be encoded as UTF-8 and the error escapes the
    middleware: every attempt is a 500 and the request never runs."""
    key = new_key()
    headers = [("content-type", "application/json")]
    response = server.post(key=key, content=b'{"note": "\\ud800"}', headers=headers)
    assert response.status_code == 201, response.text  # fails: 500
    assert len(server.executions(key)) == 1
