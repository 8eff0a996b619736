"""growlm: pretrain."""
