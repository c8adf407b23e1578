"""One description per setting, written beside its field: the source of `--help` and of the README's table.

A schema field declared with ``setting(default, "what it does")`` carries its description in the
dataclass field's metadata (OmegaConf ignores metadata, so the Hydra schema is unchanged).
``setting_docs`` walks a schema into ``key, default, description`` rows; ``help_template``
turns them into Hydra's ``--help`` page and ``markdown_table`` into the README's table.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

HELP = "help"


def setting(default: Any = MISSING, description: str = "", *, factory: Any = MISSING) -> Any:
    """A dataclass field with a one-line description (``factory`` for a mutable default)."""
    metadata = {HELP: description}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SettingDoc:
    key: str  # dotted, as on the command line
    default: str  # as shown to a user
    description: str


def shown_default(value: Any) -> str:
    """A default as a user would type it: null, true/false, plain numbers and strings, {} and []."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    if isinstance(value, list):
        return "[]" if not value else str(value)
    return str(value)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def setting_docs(schema: Any, prefix: str = "") -> list[SettingDoc]:
    """Every leaf setting of a dataclass schema, in declaration order; nested dataclasses become ``group.key``."""
    rows = []
    for f in fields(schema):
        if f.name == "defaults":
            continue
        key = f"{prefix}{f.name}"
        value = default_of(f)
        if is_dataclass(value):
            rows += setting_docs(value, prefix=f"{key}.")
            continue
        rows.append(SettingDoc(key, shown_default(value), f.metadata.get(HELP, "")))
    return rows


def undocumented(docs: list[SettingDoc]) -> list[str]:
    """Keys whose field has no description."""
    return [doc.key for doc in docs if not doc.description.strip()]


def markdown_table(docs: list[SettingDoc]) -> str:
    """The settings as a Markdown table: setting, default, what it does."""
    lines = ["| setting | default | what it does |", "|---|---|---|"]
    for doc in docs:
        description = doc.description.replace("|", "\\|")
        lines.append(f"| `{doc.key}` | `{doc.default}` | {description} |")
    return "\n".join(lines) + "\n"


def help_lines(docs: list[SettingDoc]) -> str:
    """The settings as aligned plain text, one per line: ``key=default  description``."""
    assignments = [f"{doc.key}={doc.default}" for doc in docs]
    width = max(len(a) for a in assignments) + 2
    return "\n".join(f"  {a.ljust(width)}{doc.description}" for a, doc in zip(assignments, docs))


def help_template(app: str, summary: str, docs: list[SettingDoc], footer: str = "") -> dict[str, str]:
    """Hydra's ``hydra/help`` node: the settings with their descriptions, then the config groups.

    Hydra substitutes ``$NAME`` in the template, so a literal ``$`` is written ``$$``.
    """
    settings = help_lines(docs).replace("$", "$$")
    template = (
        f"{app}: {summary}\n\n"
        "== Settings (override any with key=value) ==\n"
        f"{settings}\n\n"
        "== Presets (group=option) ==\n$APP_CONFIG_GROUPS\n\n"
        f"{footer}\n"
        "Hydra's own options: --hydra-help"
    )
    return {"app_name": app, "header": "", "footer": "", "template": template}
