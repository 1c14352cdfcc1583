"""The package's version, in a module of its own: read by the modules that send it (the
User-Agent, the OTel resource) without importing the whole package, and by setup.cfg."""

__version__ = "0.1.0"
