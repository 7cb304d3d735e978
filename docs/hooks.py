"""MkDocs hooks for the icl_lens docs site (mkdocs.yml: ``hooks``; excluded from the site itself).

Docstrings cite objects with Sphinx roles (``:func:`icl_lens.lens.logit_lens```), which Markdown
shows as the role's name before the code. The role is dropped and the name becomes an optional
cross-reference: a link where the API reference documents the object, plain code elsewhere; a
leading ``~`` shows the last component only, as Sphinx does.

Docstrings also index nested lists as ``[query][layer]``: in Markdown that is a reference-style link, which
mkdocs-autorefs takes for a cross-reference to a Python object named ``layer`` and, finding none,
fails ``mkdocs build --strict``. A reference whose target is one plain word (no dot, so not a Python
path) and that no mkdocstrings handler marked as optional is put back as the literal text.
"""

from __future__ import annotations

import re

_AUTOREF = re.compile(r"<autoref (?P<attrs>[^>]*)>(?P<text>.*?)</autoref>", flags=re.DOTALL)
_PLAIN_WORD_TARGET = re.compile(r'(?:^|\s)identifier="(?P<target>[A-Za-z_][A-Za-z0-9_]*)"')


def _literal(match: re.Match[str]) -> str:
    target = _PLAIN_WORD_TARGET.search(match["attrs"])
    if target is None or re.search(r"(?:^|\s)optional(?:\s|=|$)", match["attrs"]):
        return match[0]
    return f"[{match['text']}][{target['target']}]"


# the same reference as mkdocs-autorefs before 1.3 writes it
_LEGACY_AUTOREF = re.compile(
    r'<span data-autorefs-identifier="?(?P<target>[A-Za-z_][A-Za-z0-9_]*)"?(?: [^<>]*)?>(?P<text>.*?)</span>',
    flags=re.DOTALL,
)


_SPHINX_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):<code>(?P<tilde>~?)(?P<name>[\w.]+)</code>")


def _cross_reference(match: re.Match[str]) -> str:
    name = match["name"]
    shown = name.rsplit(".", 1)[-1] if match["tilde"] else name
    return f'<autoref identifier="{name}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, **kwargs: object) -> str:
    """The page's HTML with Sphinx roles as cross-references and plain-word references put back as
    text (see the module docstring)."""
    html = _SPHINX_ROLE.sub(_cross_reference, html)
    html = _AUTOREF.sub(_literal, html)
    return _LEGACY_AUTOREF.sub(lambda match: f"[{match['text']}][{match['target']}]", html)
