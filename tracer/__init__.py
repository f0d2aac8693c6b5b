"""podtrace's headless core: kernel capabilities, probes, decoding, aggregation, lab, CLI.

Nothing under tracer/ imports textual; tests/unit/test_headless.py checks it.
"""

__version__ = "0.1.0"
