"""carpd: CARP virtual-IP failover, a drop-in replacement for ucarp."""
__version__ = "0.1.0"
