"""The package version (a leaf module: `loading` keys its converted cache by it)."""
__version__ = "0.1.0"
