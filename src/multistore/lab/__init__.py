"""The lab: throwaway real servers and fault injection for tests and benchmarks.

:mod:`multistore.lab.servers` starts real PostgreSQL, MariaDB, Redis, FalkorDB and
InfluxDB processes on free loopback ports in temporary directories;
:mod:`multistore.lab.proxy` puts a TCP proxy in front of one that can cut, blackhole
or slow its connections. Later issues add workloads and history checking.
"""
