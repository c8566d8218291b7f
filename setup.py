"""The compiled build's extension modules; all other metadata is in pyproject.toml.

Run by pip through build_backend/dockgate_build.py: ``DOCKGATE_COMPILE=1 pip install .``
compiles the data plane with mypyc, and a plain ``pip install .`` builds pure Python.
"""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "build_backend"))
from dockgate_build import COMPILED, compile_requested

if compile_requested():
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"))
else:
    setup()
