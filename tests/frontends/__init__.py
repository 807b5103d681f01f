"""Tests for roomcast.frontends."""
