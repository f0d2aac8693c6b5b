"""`python -m tracer.benchmarks` (what `make bench` runs): the runner is run.py."""

import sys

from tracer.benchmarks.run import main

if __name__ == "__main__":  # not when a test walks the packages
    sys.exit(main())
