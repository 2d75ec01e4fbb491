"""Test-only helpers (tiny stages for the training-engine tests)."""
