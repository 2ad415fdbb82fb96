"""``python -m pointd.relay``: the same as ``pointd relay``."""

import sys

from pointd.relay.cli import main

sys.exit(main(sys.argv[1:]))
