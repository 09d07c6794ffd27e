"""The fault-injection suite: shares trainkit (tiny CPU config, CLI subprocess helpers) with the
training tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
