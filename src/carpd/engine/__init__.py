"""The I/O shell: one process per interface (sockets, netlink, scripts, control
socket, watchdog) around the core; the engine never imports pydantic."""
