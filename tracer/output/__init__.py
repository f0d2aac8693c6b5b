"""What people and scripts read: rows, lines, JSON, table widths, progress, errors and exit codes."""
