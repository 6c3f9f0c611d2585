"""``python -m drivers.virtual``: serve the virtual inspection station."""

import sys

from drivers.virtual.station import main

sys.exit(main())
