"""Test configuration: Qt renders offscreen, so widget tests run on machines with no display; the station's data
directory (deployed models, scan history, audit log) is a temporary one, so tests never touch a real station's."""

import os
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["PLMAPPER_HOME"] = tempfile.mkdtemp(prefix="plmapper-test-home-")
