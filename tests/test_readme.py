"""The README's promises: a short overview that names what RestMQ uses, leads into every
page of the manual, and whose tour answers, command by command, what it shows."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib

import pytest

from tests.support import BIN, ROOT, broker_url, client_env

README = ROOT / "README.rst"
MAX_LINES = 400
TOUR = "A five-minute tour"
DOCUMENTED_URL = "http://127.0.0.1:8888"  # where `make run` listens
STEP_END = "@@readme-step-end@@"


def readme() -> str:
    return README.read_text()


def section(text: str, title: str) -> str:
    """The body of the top-level section ``title`` (up to the next one)."""
    match = re.search(rf"^{re.escape(title)}\n=+\n(.*?)(?=^[^\n]+\n=+\n|\Z)", text, re.M | re.S)
    assert match, f"README.rst has no section {title!r}"
    return match.group(1)


def console_blocks(text: str) -> list[list[str]]:
    """The lines of each ``.. code-block:: console``, unindented, in order."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: console\n\n((?:   .*\n|\n)+)", text, re.M):
        lines = [line[3:] for line in match.group(1).rstrip("\n").split("\n")]
        blocks.append(lines)
    return blocks


def steps(blocks: list[list[str]]) -> list[tuple[str, list[str]]]:
    """Each ``$ command`` with the lines the README shows as its output."""
    found: list[tuple[str, list[str]]] = []
    for block in blocks:
        for line in block:
            if line.startswith("$ "):
                found.append((line[2:], []))
            else:
                assert found, f"output before any command: {line!r}"
                found[-1][1].append(line)
    return found


def matches(shown: str, got: str) -> bool:
    """``…`` in the README stands for any text (a path, say)."""
    pattern = ".*?".join(re.escape(part) for part in shown.split("…"))
    return re.fullmatch(pattern, got) is not None


def test_readme_stays_an_overview():
    lines = readme().count("\n")
    assert lines <= MAX_LINES, f"README.rst has {lines} lines; the details belong in docs/"


def test_readme_leads_into_every_page_of_the_manual():
    text = readme()
    linked = set(re.findall(r"<(docs/[^>]+)>`__", text))
    for target in linked:
        assert (ROOT / target).is_file(), f"README.rst links to {target}, which does not exist"
    pages = {
        f"docs/{page.name}"
        for page in (ROOT / "docs").iterdir()
        if page.suffix in (".rst", ".md") and page.stem != "index"
    }
    assert pages - linked == set(), "pages of the manual the README does not lead to"


def test_readme_names_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = project["project"]["dependencies"] + project["dependency-groups"]["dev"]
    names = {re.match(r"[A-Za-z0-9_.-]+", spec).group(0) for spec in required}
    text = readme().lower()
    unnamed = sorted(name for name in names if name.lower() not in text)
    assert unnamed == [], f"dependencies the README does not name: {unnamed}"


def test_every_make_target_the_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", readme()))
    assert named, "the README names no make target"
    assert named - targets == set(), "make targets the README names but the Makefile lacks"


@pytest.mark.needs("curl")
def test_the_tour_answers_as_the_readme_shows(broker_factory):
    """Every command of the tour, in order, in one shell (so that activating .venv carries
    on to the next commands, as at a terminal), on a fresh broker."""
    tour = steps(console_blocks(section(readme(), TOUR)))
    assert len(tour) >= 10, "the tour lost its commands"
    broker = broker_factory()
    url = broker_url(broker)
    script = "".join(
        f"{command.replace(DOCUMENTED_URL, url)}\nprintf '\\n{STEP_END}\\n'\n"
        for command, _ in tour
    )
    # A fresh terminal: the checkout's .venv/bin is on PATH only once the tour activates it.
    path = os.pathsep.join(
        part for part in os.environ.get("PATH", "").split(os.pathsep) if part != str(BIN)
    )
    env = client_env(url, PATH=path)
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = done.stdout.split(f"\n{STEP_END}\n")
    assert len(outputs) == len(tour) + 1, done.stdout + done.stderr
    for (command, shown), output in zip(tour, outputs, strict=False):
        got = [line.rstrip("\r") for line in output.split("\n")] if output else []
        if got and got[-1] == "":
            got.pop()
        assert len(got) == len(shown) and all(map(matches, shown, got)), (
            f"$ {command}\nREADME shows:\n"
            + "\n".join(shown)
            + "\nthe broker answered:\n"
            + "\n".join(got)
            + f"\n(the end of the tour's stderr:\n{done.stderr[-2000:]})"
        )
