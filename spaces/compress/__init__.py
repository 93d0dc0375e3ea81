"""spaces.compress."""
