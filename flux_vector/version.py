"""The package version, in a module of its own so that reading it imports nothing else (``flux_vector/__init__.py``
re-exports the facade lazily; a submodule importing the root for the version would load the whole job layer)."""

__version__ = "0.1.0"
