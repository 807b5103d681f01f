"""Reference servers that speak the benchmark wire protocol (see bench/README.md)."""
