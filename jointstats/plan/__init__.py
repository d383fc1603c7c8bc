"""Spec to sealed plan: the spec model, the sealed plan, fields for exact statistics and privacy accounting."""
