"""The generator: Kontext-style in-context personalization (see generator.py)."""
