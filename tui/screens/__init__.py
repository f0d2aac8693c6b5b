"""Screens of the podtrace TUI."""
