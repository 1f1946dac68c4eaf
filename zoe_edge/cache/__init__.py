"""Exact-match response cache: key, policy, backends (memory LRU, Redis) and the service the fronts use.

Kept import-light: the registry imports :mod:`zoe_edge.cache.config`, so nothing here imports the
registry at package import time.
"""
