"""``python -m any2point.report``: the same as ``any2point-report``."""
import sys

from .cli import main

sys.exit(main())
