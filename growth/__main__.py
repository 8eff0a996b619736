"""`python -m growth ...`: see growth/cli.py."""
import sys

from growth.cli import main

sys.exit(main())
