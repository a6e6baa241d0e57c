from __future__ import annotations

from importlib.metadata import version

from monitoring.version import VERSION


def test_version_is_the_installed_distributions():
    assert version("wharf") == VERSION
