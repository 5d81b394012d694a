"""The pure protocol core: bytes on the wire and the election, fed packets and `now`,
returning actions (no I/O, no clock, no sockets)."""
