"""DLAS Lab host controller: build, optimize, lower, compile, ship, time, store, report."""
__version__ = "0.1.0"
