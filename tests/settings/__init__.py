"""Tests for roomcast.settings."""
