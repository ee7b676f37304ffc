"""The protocol: frames and their checks, the session table, and the sans-I/O engines of both ends."""
