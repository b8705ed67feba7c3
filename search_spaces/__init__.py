"""Search-space definitions (space.py) and named presets (presets.py)."""
