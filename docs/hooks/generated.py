"""MkDocs hook: the parts of the docs generated from the code, so that they cannot drift from it.

A page asks for them with a marker on a line of its own:

- ``<!-- duetrl:config-reference -->``: every setting of every algorithm, type, default and meaning, from the
  config dataclasses (``duetrl.params.rows``, which ``duetrl params`` prints too);
- ``<!-- duetrl:settings ALGO -->``: the settings of one algorithm;
- ``<!-- duetrl:presets ALGO -->``: the shipped presets of one algorithm, with their descriptions (the measured
  figures the preset files state);
- ``<!-- duetrl:docstring MODULE -->``: a module's docstring as written (the algorithms' losses, laid out in
  aligned lines that Markdown would run together);
- ``<!-- duetrl:include PATH -->``: a file under docs/ written by a script (the tutorial's table of scores, which
  ``scripts/tutorial_figures.sh`` writes with its figures).

It also drops the Sphinx roles of the docstrings (``:func:`` before ``train``) from the API pages.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

# The docstrings' Sphinx roles (:func:`train`), which mkdocstrings leaves as text before the code: shown as the code.
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc):(?=<code)")
MARKER = re.compile(r"^<!-- duetrl:(config-reference|settings|presets|include|docstring)(?: (\S+))? -->$", re.MULTILINE)
DOCS = Path(__file__).resolve().parents[1]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def settings_table(cls: type, shown: dict[str, str] | None = None) -> str:
    from duetrl.params import rows

    lines = ["| setting | type | default | what it is |", "|---|---|---|---|"]
    for name, kind, default, text in rows(cls):
        value = (shown or {}).get(name, repr(default))
        lines.append(f"| `{name}` | {_cell(kind)} | `{_cell(value)}` | {_cell(text)} |")
    return "\n".join(lines)


def config_reference() -> str:
    from duetrl.algos import ALGOS
    from duetrl.config import RunConfig

    parts = [
        "## Run settings\n\nEvery algorithm's run has these (`duetrl params` prints the same).\n",
        settings_table(RunConfig, {"env_id": "(required)", "algo": "'ac'"}),
    ]
    for name, spec in ALGOS.items():
        parts += [f"\n## `{name}`\n\n{spec.description}.\n", settings_table(spec.config_cls)]
    return "\n".join(parts)


def presets_table(algo: str) -> str:
    from duetrl.config import list_presets

    lines = ["| env | preset | what it does, as measured |", "|---|---|---|"]
    for row in list_presets():
        if row["algo"] == algo:
            lines.append(f"| {row['env']} | `{row['name']}` | {_cell(row['description'])} |")
    return "\n".join(lines) if len(lines) > 2 else "No shipped preset: the defaults below apply."


def expand(kind: str, arg: str | None) -> str:
    from duetrl.algos import get_algo

    if kind == "config-reference":
        return config_reference()
    if kind == "docstring":
        import importlib
        import inspect

        text = html.escape(inspect.getdoc(importlib.import_module(arg)) or "")
        return f'<div class="docstring-as-written highlight"><pre><code>{text}</code></pre></div>'
    if kind == "include":
        return (DOCS / arg).read_text()
    if kind == "settings":
        return settings_table(get_algo(arg).config_cls)
    return presets_table(arg)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda m: expand(m.group(1), m.group(2)), markdown)


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub("", html)
