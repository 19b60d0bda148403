"""Training code (never imported on the inference path)."""
