"""Tests of `spaces`."""
