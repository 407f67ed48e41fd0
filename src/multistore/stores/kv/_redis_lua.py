"""The Lua scripts and the ``SCAN MATCH`` escaping that the Redis key-value backends
(one server, and Redis Cluster) share; no driver imported here."""

from __future__ import annotations

from typing import Final

__all__ = ["COMPARE_AND_SET_LUA", "RATE_LIMIT_LUA", "glob_escape"]

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

_GLOB_SPECIAL: Final = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)
