"""Builds the C log library (src_c/) as a cffi API-mode extension; metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["evstore/_build_evlog.py:ffi"])
