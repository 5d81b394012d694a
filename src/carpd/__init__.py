"""carpd: CARP virtual-IP failover, a drop-in replacement for ucarp."""
__version__ = "0.2.0"
