"""The documentation names only what exists: every `configs/....py` path in README.md and
docs/*.md is a file of the repository, every `magnet-jax VERB` is a verb of the CLI (its `--help`
exits 0), and every relative link between the pages points at a file (and heading) that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

CONFIG_PATH = re.compile(r"(?<![\w/.-])configs/[\w./-]*?\.py\b")
VERB = re.compile(r"\bmagnet-jax[ \t]+([a-z][\w-]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def config_paths(text: str) -> set:
    return set(CONFIG_PATH.findall(text))


def verbs(text: str) -> set:
    return set(VERB.findall(text))


def _page_texts():
    return {p: p.read_text(encoding="utf-8") for p in PAGES}


def test_pages_exist():
    names = {p.name for p in PAGES}
    for page in ("training.md", "scaling.md", "generation.md", "evaluation.md", "benchmarks.md", "architecture.md"):
        assert page in names, f"docs/{page} is missing"


def test_config_paths_exist():
    missing = [(p.relative_to(REPO).as_posix(), c) for p, text in _page_texts().items()
               for c in sorted(config_paths(text)) if not (REPO / c).is_file()]
    assert not missing, f"config files named in the docs that do not exist: {missing}"


def _all_verbs():
    return sorted(set().union(*(verbs(t) for t in _page_texts().values())))


def test_some_verbs_named():
    assert {"train", "generate"} <= set(_all_verbs())


@pytest.mark.parametrize("verb", _all_verbs())
def test_verb_is_a_cli_verb(verb, capsys):
    from magnet_jax.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    capsys.readouterr()
    assert exit_info.value.code == 0, f"`magnet-jax {verb} --help` exited {exit_info.value.code}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(text: str) -> set:
    out = set()
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def broken_links(page: Path, text: str) -> list:
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            bad.append(target)
    return bad


def test_relative_links_resolve():
    bad = {p.relative_to(REPO).as_posix(): b for p, t in _page_texts().items() if (b := broken_links(p, t))}
    assert not bad, f"links to missing files or headings: {bad}"
