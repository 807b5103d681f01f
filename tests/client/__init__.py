"""Tests for roomcast.client."""
