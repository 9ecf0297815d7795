"""Prompt data and its rules: how a template is filled, how a class with prompts of its own is
prompted (:class:`ClassPrompts`), and the checks every source of classes and templates passes
(pack files, labels files, classifier files). Imported by :mod:`zeroshot.text.prompts`, which users import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..base.errors import PromptError

PLACEHOLDER = "{label}"
CLASS_KEYS = {"name", "text", "extra", "prompts"}
# Guards against a file that is not a labels file at all (a binary, a whole corpus).
MAX_LABEL_CHARS = 1000


def render(template: str, label: str) -> str:
    return template.replace(PLACEHOLDER, label)


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassPrompts:
    """How one class is prompted when it is not simply its name in every template.

    ``texts`` replace the name in the templates (each text with each template); ``extra`` prompts
    are added as written; ``prompts``, when given, are the class's only prompts.
    """

    texts: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    prompts: tuple[str, ...] | None = None

    def rows(self, name: str, templates: Sequence[str]) -> list[tuple[int | None, str]]:
        """(template index, or None for a literal prompt; prompt) for the class called ``name``."""
        if self.prompts is not None:
            return [(None, p) for p in self.prompts]
        templated = [(t, render(tpl, text)) for text in (self.texts or (name,)) for t, tpl in enumerate(templates)]
        return templated + [(None, p) for p in self.extra]

    def as_data(self) -> dict[str, Any]:
        """JSON data for cache keys and exported classifier files."""
        out: dict[str, Any] = {}
        if self.texts:
            out["text"] = list(self.texts)
        if self.extra:
            out["extra"] = list(self.extra)
        if self.prompts is not None:
            out["prompts"] = list(self.prompts)
        return out


def check_strings(items: Any, what: str, where: str, *, allow_empty: bool = False) -> list[str]:
    if not isinstance(items, list):
        raise PromptError(f"{where}: '{what}' must be a list, got {type(items).__name__}")
    if not items and not allow_empty:
        raise PromptError(f"{where}: '{what}' is empty")
    out: list[str] = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise PromptError(f"{where}: {what} #{i} is {type(item).__name__} {item!r}, not text (quote it in YAML)")
        text = " ".join(item.split())  # a newline or run of spaces inside a name is not meaningful
        if not text:
            raise PromptError(f"{where}: {what} #{i} is blank")
        if len(text) > MAX_LABEL_CHARS:
            raise PromptError(f"{where}: {what} #{i} is {len(text)} characters long (limit {MAX_LABEL_CHARS})")
        out.append(text)
    return out


def _check_unique(items: Sequence[str], what: str, where: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items, 1):
        if item in seen:
            raise PromptError(f"{where}: duplicate {what} {item!r} (#{seen[item]} and #{i})")
        seen[item] = i


def validate_classes(items: Any, where: str) -> tuple[str, ...]:
    classes = check_strings(items, "class", where)
    _check_unique(classes, "class", where)
    return tuple(classes)


def _string_or_list(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    return check_strings(value, what, where)


def _check_literal_prompts(value: Any, what: str, where: str) -> tuple[str, ...]:
    prompts = _string_or_list(value, what, where)
    for text in prompts:
        if PLACEHOLDER in text:
            raise PromptError(
                f"{where}: {what} {text!r} contains {PLACEHOLDER}, but {what} prompts are used as written: "
                "write the class's words in it"
            )
    _check_unique(prompts, what + " prompt", where)
    return tuple(prompts)


def class_entry(item: Any, number: int, where: str) -> tuple[Any, ClassPrompts | None]:
    """One entry of a 'classes' list: a name, or a mapping with per-class prompts."""
    if not isinstance(item, dict):
        return item, None  # checked with the other names
    at = f"{where}: class #{number}"
    unknown = sorted(str(k) for k in item if k not in CLASS_KEYS)
    if unknown:
        raise PromptError(f"{at}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(CLASS_KEYS))}")
    if "name" not in item:
        raise PromptError(f"{at}: a class given as a mapping needs a 'name'")
    name = item["name"]
    texts = tuple(_string_or_list(item["text"], "text", at)) if "text" in item else ()
    extra = _check_literal_prompts(item["extra"], "extra", at) if "extra" in item else ()
    prompts = _check_literal_prompts(item["prompts"], "prompts", at) if "prompts" in item else None
    if prompts is not None and (texts or extra):
        raise PromptError(f"{at}: 'prompts' replaces the templated prompts, so 'text' and 'extra' do not apply")
    _check_unique(list(texts), "text", at)
    plain_text = not texts or (isinstance(name, str) and texts == (" ".join(name.split()),))
    if plain_text and not extra and prompts is None:
        return name, None  # prompted by its name in every template: a plain class
    return name, ClassPrompts(texts=texts, extra=extra, prompts=prompts)


def validate_class_entries(items: Any, where: str) -> tuple[tuple[str, ...], tuple[ClassPrompts | None, ...]]:
    """Class names and per-class prompting from a 'classes' list of names and mappings."""
    if not isinstance(items, list):
        raise PromptError(f"{where}: 'classes' must be a list, got {type(items).__name__}")
    entries = [class_entry(item, i, where) for i, item in enumerate(items, 1)]
    names = validate_classes([name for name, _ in entries], where)
    specs = tuple(spec for _, spec in entries)
    return names, specs if any(s is not None for s in specs) else ()


def validate_templates(items: Any, where: str) -> tuple[str, ...]:
    if not isinstance(items, list):
        raise PromptError(f"{where}: 'templates' must be a list, got {type(items).__name__}")
    if not items:
        raise PromptError(f"{where}: 'templates' is empty")
    templates = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise PromptError(f"{where}: template #{i} is {type(item).__name__} {item!r}, not text")
        if PLACEHOLDER not in item:
            raise PromptError(f"{where}: template #{i} {item!r} has no {PLACEHOLDER} placeholder")
        if len(item) > MAX_LABEL_CHARS:
            raise PromptError(f"{where}: template #{i} is {len(item)} characters long (limit {MAX_LABEL_CHARS})")
        templates.append(item)
    _check_unique(templates, "template", where)
    return tuple(templates)


# --- files ------------------------------------------------------------------------------------
