"""mkdocs hooks: the site's home page is README.md, so the front door is written once.

README links into the site as docs/<page>.md; on the site those pages sit beside the home page.
"""

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    return README.read_text(encoding="utf-8").replace("](docs/", "](")
