"""BCC C sources for podtrace's probes, shipped as package data."""
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
