"""Selkie's REST API (FastAPI)."""
