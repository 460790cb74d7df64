"""The benchmark suite of issue 6: `bench/run` (or `.venv/bin/python -m bench`); see bench/run.py."""
