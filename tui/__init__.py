"""podtrace's Textual user interface."""
