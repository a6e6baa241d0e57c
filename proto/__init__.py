"""Wire formats, sans-I/O: bytes in, values out, values in, bytes out.

Nothing here opens a socket, reads a clock, logs, or keeps global state. Each module owns one
format and raises one documented error type (a subclass of :class:`proto.errors.ProtocolError`).
"""
