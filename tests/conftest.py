"""Test configuration: Qt renders offscreen, so widget tests run on machines with no display."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
