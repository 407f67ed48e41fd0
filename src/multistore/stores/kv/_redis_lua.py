"""The Lua scripts, their arguments, reply decoding and the ``SCAN MATCH`` escaping that
the Redis key-value backends (one server, and Redis Cluster) share; no driver imported
here."""

from __future__ import annotations

import math
from typing import Final

from multistore.stores.kv._checks import check_ttl, check_value, ttl_millis

__all__ = ["COMPARE_AND_SET_LUA", "RATE_LIMIT_LUA", "cas_args", "glob_escape", "ttl_from_pttl"]

# KEYS[1] the limiter's sorted set; ARGV: limit, window (s), a unique member.
# Scores are the server's clock in epoch seconds (TIME), so clients with skewed
# clocks share one timeline. Entries older than the window are dropped; a
# refused request is not recorded.
RATE_LIMIT_LUA: Final = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
    redis.call('ZADD', key, now, ARGV[3])
    redis.call('PEXPIRE', key, math.ceil(window * 1000))
    return {1, limit - count - 1, '0'}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, 0, tostring(tonumber(oldest[2]) + window - now)}
"""

# KEYS[1]; ARGV: '1' when a value is expected ('' for "the key is missing"), the
# expected value, the new value, the TTL in ms ('' for none). GET on a sorted set
# raises WRONGTYPE, so nothing changes then.
COMPARE_AND_SET_LUA: Final = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
    if cur then return 0 end
elseif cur ~= ARGV[2] then
    return 0
end
if ARGV[4] == '' then
    redis.call('SET', KEYS[1], ARGV[3])
else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""


def cas_args(
    expected: bytes | str | None, value: bytes | str, ttl: float | None
) -> list[bytes | str]:
    """ARGV of :data:`COMPARE_AND_SET_LUA`, the values checked first."""
    data = check_value(value)
    old = b"" if expected is None else check_value(expected)
    px = str(ttl_millis(check_ttl(ttl))) if ttl is not None else ""
    return ["" if expected is None else "1", old, data, px]


def ttl_from_pttl(ms: int) -> float | None:
    """A ``PTTL`` reply as :meth:`KeyValueStore.ttl` answers: None for a missing key,
    infinity for a key without expiry, else seconds."""
    if ms == -2:
        return None
    if ms == -1:
        return math.inf
    return ms / 1000


_GLOB_SPECIAL: Final = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)
