"""The Debian glue: ifupdown hooks and stanzas, carpctl, dpkg status, migration
from ucarp."""
