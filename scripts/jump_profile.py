"""The jump profile of Hugging Face causal LM folders: `python scripts/jump_profile.py MODEL_DIR... --out DIR`,
the same as `python -m pretrain.probes.jump.profile` (see there)."""
import sys

from pretrain.probes.jump.profile import main

if __name__ == "__main__":
    sys.exit(main())
