"""Test and demo helpers: a real Hub-API server (olah) over locally built git repos."""
