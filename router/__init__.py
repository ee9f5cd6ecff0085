"""diffnas package."""
