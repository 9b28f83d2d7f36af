"""MkDocs hook (mkdocs.yml `hooks:`): fills the generated reference pages at build time.

Each `<!-- generated: NAME -->` marker in a page (docs/reference/*.md) is replaced by
`vaelab.docs_reference.PAGES[NAME]()`, built from the installed code: the argparse parsers, the
config dataclasses, the docstrings. Nothing generated is checked in, so nothing can go stale.
"""

from __future__ import annotations

from vaelab.docs_reference import fill_generated


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    """Replace the page's generation markers with the generated markdown."""
    return fill_generated(markdown)
