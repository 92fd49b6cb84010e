"""DLAS Lab agent: the lightweight, TVM-runtime-only process that runs on each device."""
__version__ = "0.1.0"
