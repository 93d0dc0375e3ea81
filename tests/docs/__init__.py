"""Tests of the documentation: links resolve."""
