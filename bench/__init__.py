"""Benchmarks, run as ``python run.py bench <name>``. Not collected by pytest.

Modules here must keep their top level cheap: heavy imports go inside ``main``.
"""
