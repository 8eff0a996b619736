"""growlm: growth."""
