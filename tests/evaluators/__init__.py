"""Tests of `evaluators`."""
