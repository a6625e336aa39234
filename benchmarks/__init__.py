"""Benchmarks behind ``conveyor-hf bench``: lazy vs partial tool execution on real workloads.

``benchmarks.harness`` runs them (``python -m benchmarks.harness --quick``),
``benchmarks.workloads`` holds the workloads and their data, ``benchmarks.report`` turns
the measurements into tables, JSON and pictures. ``benchmarks/parser_speed.py`` is a
separate script (parser throughput).
"""
