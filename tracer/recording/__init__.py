"""Recordings: the file format, what a record may hold, the node state it carries, merging, pcapng export."""
