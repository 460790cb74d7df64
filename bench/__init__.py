"""The benchmark suite of issue 6: `bench/run` (or `.venv/bin/python -m bench`); see bench/run.py.

run.py: options and main; common.py: the run, the servers, the load clients, helpers; one module per
scenario (write.py, fanout.py for fan-out to all and per user, memory.py, backlog.py for replay and
delivery, storm.py for the reconnect storms of issue 18: connecting at once, a restart under load);
report.py: targets, tables, plots, docs/benchmarks.md; sink.py: the SMTP sink.
"""
