"""Depth pruning: block importance, removal, healing."""
