"""Sphinx configuration of the RestMQ manual: `make docs` builds it into docs/_build/html."""

import re
from pathlib import Path

_init = (Path(__file__).resolve().parent.parent / "restmq" / "__init__.py").read_text()

project = "RestMQ"
author = "RestMQ developers"
copyright = "the RestMQ developers"
release = re.search(r'__version__ = "([^"]+)"', _init).group(1)
version = release

extensions = ["myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Literal blocks are shell sessions, Redis keys, wire messages: shown as they are.
highlight_language = "none"

# Markdown pages link to each other's sections by their titles.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"RestMQ {release}"
html_theme_options = {
    "description": "A message broker over HTTP and JSON that keeps its queues in Redis",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
