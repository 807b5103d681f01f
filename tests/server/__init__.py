"""Tests for roomcast.server."""
