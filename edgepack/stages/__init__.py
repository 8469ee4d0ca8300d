"""Pipeline stages, each `run(ctx)`: export -> quantize -> validate -> bundle (prune slots in before export)."""
