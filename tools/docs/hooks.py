"""MkDocs hook: every page of docs/ is reachable from the navigation.

Pages listed in ``mkdocs.yml``'s ``nav`` keep their place; any other page of
``docs/`` (one added later, say) is appended under a "More pages" section, in
file-name order, instead of being built but unreachable.
"""

from __future__ import annotations

from typing import Any

from mkdocs.structure.nav import Navigation, Section
from mkdocs.structure.pages import Page


def on_nav(nav: Navigation, config: Any, files: Any) -> Navigation:
    listed = {page.file.src_uri for page in nav.pages}
    extra = [
        f.page if f.page is not None else Page(None, f, config)
        for f in sorted(files.documentation_pages(), key=lambda f: f.src_uri)
        if f.src_uri not in listed
    ]
    if not extra:
        return nav
    section = Section("More pages", extra)
    for page in extra:
        page.parent = section
    nav.items.append(section)
    previous = nav.pages[-1] if nav.pages else None
    for page in extra:
        page.previous_page, page.next_page = previous, None
        if previous is not None:
            previous.next_page = page
        previous = page
        nav.pages.append(page)
    return nav
