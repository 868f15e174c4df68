"""``python -m cxrcore.cli``: the ``cxr`` command."""
import sys

from . import main

sys.exit(main())
