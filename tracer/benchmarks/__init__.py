"""`make bench`: one module per figure, each returning a Section that tracer/benchmarks/run.py writes to BENCHMARKS.md.

stats (pure helpers), machine, pipeline, packetpath, sustained, startup, memory, rulecount; consumer, load and
table_rss are the child processes they run (a traced consumer, a UDP generator, a table-holding process).
"""
