"""``python -m neurocine``: the same command line as ``neurocine``."""

import sys

from neurocine.streams.cli import main

sys.exit(main())
