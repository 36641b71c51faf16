"""Storage drivers: where branch data lives (local datadirs, or a remote page server)."""
