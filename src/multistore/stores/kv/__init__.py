"""The key-value model: strings with TTL, counters, sorted sets and a rate limiter.

Backends: ``sqlite:///path.db`` (embedded, :class:`SQLiteKeyValueStore` in
``_sqlite``), ``redis://host:port/0`` (:class:`RedisKeyValueStore` in ``_redis``) and
``redis+cluster://h1:7000,h2:7001`` (:class:`RedisClusterKeyValueStore` in
``_redis_cluster``).
Open one with :func:`multistore.stores.open_store`.
"""

from multistore.stores.kv._api import KeyValueStore, RateLimit, WrongTypeError

__all__ = ["KeyValueStore", "RateLimit", "WrongTypeError"]
