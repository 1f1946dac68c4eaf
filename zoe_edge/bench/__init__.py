"""Workloads and scoring shared by ``zoe-edge bench`` and the benchmarks under ``bench/``."""
