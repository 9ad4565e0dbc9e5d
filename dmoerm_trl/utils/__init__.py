"""Small helpers shared by the whole package (no model, trainer or TRL imports here)."""
