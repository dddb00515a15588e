"""The front door and the documentation site: README's links, the site's nav and the generated
config reference agree with the files (`make docs` builds the site itself, strict, in CI)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from pipeline.tools import reference

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"
README_MAX_LINES = 260
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _local_links(markdown: str) -> list[str]:
    """The link targets of a markdown text that point into the repository (no scheme, no bare anchor)."""
    return [t for t in LINK.findall(markdown) if "://" not in t and not t.startswith(("#", "mailto:"))]


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return [p for item in node for p in _nav_pages(item)]


def _mkdocs_config() -> dict:
    # mkdocs.yml has no custom YAML tags, so the safe loader reads it.
    return yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_the_readme_is_short():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the manual belongs in docs/"


def test_every_readme_link_names_a_file_and_every_docs_link_a_page_of_the_site():
    nav = set(_nav_pages(_mkdocs_config()["nav"]))
    links = _local_links((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert links, "the README links to no document"
    for target in links:
        path = target.split("#", 1)[0]
        assert (REPO_ROOT / path).is_file(), f"README links to {target}, which is not a file"
        if path.startswith("docs/") and path.endswith(".md"):
            assert path.removeprefix("docs/") in nav, f"README links to {path}, which the site's nav lacks"


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    nav = _nav_pages(_mkdocs_config()["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert len(nav) == len(set(nav)), "a page appears twice in the nav"
    assert set(nav) - pages == set(), "the nav names pages that do not exist"
    assert pages - set(nav) == set(), "pages that the nav does not list"


def test_links_between_pages_resolve_to_pages():
    for page in DOCS.rglob("*.md"):
        for target in _local_links(page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path:
                assert (page.parent / path).resolve().is_file(), f"{page.relative_to(REPO_ROOT)} links to {target}"


def test_the_home_page_is_the_readme_with_its_links_into_the_site():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", REPO_ROOT / "scripts" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    class Page:
        class file:
            src_uri = "index.md"

    home = hooks.on_page_markdown("placeholder", Page, config=None, files=None)
    assert home.startswith("# Attention experiment pipeline")
    for target in _local_links(home):
        path = target.split("#", 1)[0]
        assert (DOCS / path).is_file(), f"the home page links to {target}, which is no page of the site"


def test_the_config_reference_is_what_the_schema_and_conf_give():
    stale = [
        name
        for name, text in reference.pages().items()
        if not (DOCS / "reference" / name).is_file() or (DOCS / "reference" / name).read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"docs/reference/{stale} out of date: run make docs"


def test_the_config_reference_lists_every_key_and_preset():
    model_page = reference.group_page("model")
    for key in ("kernel_sizes", "positional_encoding", "padding", "readout", "attention_l2"):
        assert f"| `{key}` |" in model_page
    assert "one of `zero`, `replicate`" in model_page
    for preset in (REPO_ROOT / "conf" / "model").glob("*.yaml"):
        assert f"### `{preset.stem}`" in model_page
    train_page = reference.group_page("train")
    assert "| `backup_every` | int (≥ 1) | `1` |" in train_page
