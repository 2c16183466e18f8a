"""Clips and render jobs (built in the rendering issue)."""
