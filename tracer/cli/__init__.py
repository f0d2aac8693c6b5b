"""The `podtrace` command: main.py lists the subcommands, each in a module named after it."""
