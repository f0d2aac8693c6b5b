"""Widgets of the podtrace TUI."""
