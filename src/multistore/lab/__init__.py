"""The lab: throwaway real servers, fault injection, workloads and history checking.

:mod:`multistore.lab.servers` starts real PostgreSQL, MariaDB, Redis, FalkorDB and
InfluxDB processes on free loopback ports in temporary directories;
:mod:`multistore.lab.proxy` puts a TCP proxy in front of one that can cut, blackhole
or slow its connections. ``_history`` records every operation's invocation and
completion (Jepsen's event shape), ``_faults`` runs a fault schedule (kill, partition,
latency, clock skew), ``_workload`` drives reads/writes/read-modify-writes, and
``_quorum_lab`` puts them together behind ``multistore lab quorum``; the checkers
themselves are pure and live in :mod:`multistore.core`.
"""
