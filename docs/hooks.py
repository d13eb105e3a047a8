"""MkDocs hook: docstrings name other objects with Sphinx roles (``:func:`name```), which Markdown
leaves as text before the code span; the role prefix is dropped from the rendered pages."""
import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):(?=<code>)")


def on_page_content(html, **kwargs):
    return _ROLE.sub("", html)
