"""Recorded workflow histories for the replay (determinism) tests; see README.md."""
