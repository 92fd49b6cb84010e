"""Project kernels. Every module here registers its kernels with ``lower.registry.register`` at import;
``registry.load()`` imports them all, so adding a kernel is adding a file (see docs/adding-a-kernel.md)."""
