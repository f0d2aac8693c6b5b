"""Helpers shared by the end-to-end tests (importable because pytest puts the rootdir's tests/ on sys.path)."""
