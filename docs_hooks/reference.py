"""MkDocs hook: replace each `<!-- reference: KEY -->` line of a page with the field table that
`hf_finetune.reference.table(KEY)` generates from the code, so the reference cannot drift from it."""

from __future__ import annotations

import re

from mkdocs.exceptions import PluginError

from hf_finetune import reference

MARKER = re.compile(r"^<!-- reference: ([\w.-]+) -->$", re.MULTILINE)


def on_page_markdown(markdown, page, config, files):
    known = reference.keys()

    def replace(match):
        key = match.group(1)
        if key not in known:
            raise PluginError(f"{page.file.src_uri}: no reference table {key!r}; tables: {', '.join(known)}")
        return reference.table(key)

    return MARKER.sub(replace, markdown)
