"""growlm: regularizers."""
