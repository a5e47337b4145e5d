"""operators: see docs/architecture.md."""
