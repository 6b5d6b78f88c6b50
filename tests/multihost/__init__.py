"""Tests across network namespaces: one agent per "machine" (see conftest.py and netns.py)."""
