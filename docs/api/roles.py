"""mkdocs hook: Sphinx cross-reference roles in docstrings (``:func:`~trajopt.rollout```) rendered as links.

The docstrings are written for both ``help()`` and this site; mkdocstrings' Google-style parser leaves the roles as
text (``:func:<code>~trajopt.rollout</code>``). This hook turns each into an optional autoref: a link where the name
is documented on the site (``~`` shows only its last component, as in Sphinx), plain code otherwise.
"""
import re

ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")


def _link(match):
    tilde, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if tilde else name
    return f'<autoref identifier="{name}" optional><code>{shown}</code></autoref>'


def on_page_content(html, **kwargs):
    return ROLE.sub(_link, html)
