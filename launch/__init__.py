"""growlm: launch."""
