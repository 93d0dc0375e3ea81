"""spaces.models."""
