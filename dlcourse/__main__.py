"""``python -m dlcourse`` runs the command line (see dlcourse.tools.cli)."""
import sys

from .tools.cli import main

sys.exit(main())
