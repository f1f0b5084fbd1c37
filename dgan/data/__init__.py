"""Datasets: built-in procedural scenes and loaders for real data."""
