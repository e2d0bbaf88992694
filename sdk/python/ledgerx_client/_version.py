"""The package version; it follows the server's (a test checks they match)."""

__version__ = "0.1.0"
