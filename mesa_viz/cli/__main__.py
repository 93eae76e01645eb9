"""``python -m mesa_viz.cli`` = ``mesa-viz``."""

import sys

from . import main

sys.exit(main())
