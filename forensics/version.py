"""The package version, written once: ``pyproject.toml`` reads it from here (setuptools ``attr:``).

>>> isinstance(__version__, str)
True
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
