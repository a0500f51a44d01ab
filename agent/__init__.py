"""The ``darkstorage`` command line, configuration and daemon."""

__version__ = "0.1.0"
