"""``python -m dlcourse`` runs the command line (see dlcourse.cli)."""
import sys

from .cli import main

sys.exit(main())
