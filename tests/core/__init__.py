"""Tests for roomcast.core."""
