"""Make the scripts/ folder importable, so the scripts' pure functions are tested alone."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
