"""Installs the dpr and colbert packages and their command-line entry points.

The metadata, dependencies and entry points are in pyproject.toml (PEP 621); this file stays for tools
and users that still call ``setup.py``.
"""

from setuptools import setup

setup()
