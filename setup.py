"""Kept for tools and habits that call setup.py; the project is described in pyproject.toml."""

from setuptools import setup

setup()
