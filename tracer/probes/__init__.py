"""The probes: their C source built for a session, and the attach mechanisms BCC has no macro for."""
