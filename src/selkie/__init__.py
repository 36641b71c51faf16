"""Selkie: serverless MariaDB."""

__version__ = "0.1.0"
