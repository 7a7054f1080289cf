"""Typed specs: parsing, validation and defaults for the operator's resources."""
