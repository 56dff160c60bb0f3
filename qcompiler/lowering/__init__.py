"""One module per backend: its pattern table and weight packing. Filled in by the backend work."""
