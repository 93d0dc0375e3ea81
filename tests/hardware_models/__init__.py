"""Tests of `hardware_models`."""
