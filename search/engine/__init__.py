"""search.engine.loop."""
