"""Tests of the code's shape: layers and cycles."""
