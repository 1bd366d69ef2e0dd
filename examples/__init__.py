"""Code that docs/tools.md shows, kept here so that tests run exactly what the documentation says."""
