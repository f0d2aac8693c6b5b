"""Where events come from: a live session (BCC, the ring buffer) or a recording read back, with one interface."""
