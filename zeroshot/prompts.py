"""Prompt sets: class names plus the templates that turn each into prompts.

A prompt pack is a YAML file::

    name: cifar10
    description: CIFAR-10, 10 classes of small natural images
    source: where the class names and templates come from
    classes: [airplane, automobile, ...]
    templates:
      - "a photo of a {label}."

Every ``{label}`` in a template is replaced by the class name; no other substitution happens, so
braces elsewhere in a template are kept as they are. This module does not import torch.
"""

from __future__ import annotations

import difflib
import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PromptError, UnknownDatasetError

PLACEHOLDER = "{label}"
PACK_KEYS = {"name", "description", "source", "classes", "templates"}
DEFAULT_PACK = "default"
# Guards against a file that is not a labels file at all (a binary, a whole corpus).
MAX_LABEL_CHARS = 1000


@dataclass(frozen=True)
class PromptSet:
    """Class names and the templates that are averaged into each class's embedding."""

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    description: str = ""
    source: str = ""
    origin: str = field(default="", compare=False)  # file it came from, for messages

    def prompts_for(self, label: str) -> list[str]:
        """The prompt texts of one class, in template order."""
        return [render(t, label) for t in self.templates]

    def all_prompts(self) -> list[str]:
        """Every prompt, class-major: class 0's templates, then class 1's, ..."""
        return [render(t, c) for c in self.classes for t in self.templates]


def render(template: str, label: str) -> str:
    return template.replace(PLACEHOLDER, label)


# --- validation -------------------------------------------------------------------------------


def _check_strings(items: Any, what: str, where: str, *, allow_empty: bool = False) -> list[str]:
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
    classes = _check_strings(items, "class", where)
    _check_unique(classes, "class", where)
    return tuple(classes)


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


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PromptError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise PromptError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _load_yaml(path: Path) -> Any:
    import yaml  # pyyaml; the safe loader only: no Python object tags

    text = _read_text(path)
    # libyaml's C version of the safe loader when pyyaml has it: the same documents, ~10x faster
    # (47 ms -> 5 ms for the ImageNet pack), which is most of a warm run's text side.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PromptError(f"{path}: invalid YAML{at}: {problem}") from None


def _check_keys(data: dict[Any, Any], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in PACK_KEYS)
    if unknown:
        allowed = ", ".join(sorted(PACK_KEYS))
        raise PromptError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")


def load_pack_file(path: str | Path, *, require_classes: bool = True) -> PromptSet:
    """Load and validate one prompt pack YAML file."""
    path = Path(path)
    where = str(path)
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise PromptError(f"{where}: expected a mapping with 'name', 'classes' and 'templates'")
    _check_keys(data, where)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PromptError(f"{where}: 'name' must be a non-empty string")
    for key in ("description", "source"):
        if key in data and not isinstance(data[key], str):
            raise PromptError(f"{where}: '{key}' must be a string")
    if "templates" not in data:
        raise PromptError(f"{where}: missing 'templates'")
    templates = validate_templates(data["templates"], where)
    if "classes" in data:
        classes = validate_classes(data["classes"], where)
    elif require_classes:
        raise PromptError(f"{where}: missing 'classes'")
    else:
        classes = ()
    return PromptSet(
        name=name.strip(),
        classes=classes,
        templates=templates,
        description=" ".join(str(data.get("description", "")).split()),
        source=" ".join(str(data.get("source", "")).split()),
        origin=where,
    )


def load_templates_file(path: str | Path) -> tuple[str, ...]:
    """Templates from a YAML file: either a list of strings or a mapping with 'templates'."""
    path = Path(path)
    data = _load_yaml(path)
    if isinstance(data, dict):
        _check_keys(data, str(path))
        if "templates" not in data:
            raise PromptError(f"{path}: missing 'templates'")
        data = data["templates"]
    return validate_templates(data, str(path))


def read_labels_file(path: str | Path) -> list[str]:
    """Labels, one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    labels = []
    for line in _read_text(path).splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            labels.append(text)
    if not labels:
        raise PromptError(f"{path}: no labels (blank lines and '#' lines are ignored)")
    return labels


# --- packs ------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def pack_dir() -> Path:
    """Where the bundled packs are: inside the installed package, or the checkout's prompts/."""
    try:
        root = importlib.resources.files("zeroshot.prompt_packs")
        path = Path(str(root))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - broken install
        pass
    return Path(__file__).resolve().parent.parent / "prompts"  # pragma: no cover


def list_packs() -> dict[str, Path]:
    """Bundled pack names mapped to their files, sorted by name."""
    return {p.stem: p for p in sorted(pack_dir().glob("*.yaml"))}


def load_pack(name: str) -> PromptSet:
    """A bundled pack by name (case- and '-'/'_'-insensitive), or a pack file by path."""
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return load_pack_file(name, require_classes=False)
    packs = list_packs()
    by_norm = {_norm(k): v for k, v in packs.items()}
    path = by_norm.get(_norm(name))
    if path is None:
        known = ", ".join(k for k in packs if k != DEFAULT_PACK)
        close = difflib.get_close_matches(_norm(name), list(by_norm), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownDatasetError(f"unknown dataset '{name}'{hint}; known ones are: {known}")
    return load_pack_file(path, require_classes=False)


def resolve_prompt_set(
    *,
    dataset: str | None = None,
    labels_file: str | Path | None = None,
    labels: Iterable[str] = (),
    templates_file: str | Path | None = None,
) -> PromptSet:
    """Combine the CLI's prompt options into one validated PromptSet.

    Classes come from ``labels_file`` and ``labels`` (in that order) if given, else from the pack.
    Templates come from ``templates_file`` if given, else the pack, else the default pack.
    """
    given: list[str] = []
    origin = []
    if labels_file is not None:
        given += read_labels_file(labels_file)
        origin.append(str(labels_file))
    extra = list(labels)
    if extra:
        given += extra
        origin.append("--label")
    pack = load_pack(dataset) if dataset else None

    if given:
        classes = validate_classes(given, " + ".join(origin))
    elif pack is not None and pack.classes:
        classes = pack.classes
    elif pack is not None:
        raise PromptError(f"{pack.origin}: pack '{pack.name}' has no classes; give --labels FILE or --label TEXT")
    else:
        raise PromptError("no classes: give --labels FILE, --label TEXT (repeatable) or --dataset NAME")

    if templates_file is not None:
        templates = load_templates_file(templates_file)
        tname = Path(templates_file).stem
    elif pack is not None:
        templates, tname = pack.templates, pack.name
    else:
        default = load_pack(DEFAULT_PACK)
        templates, tname = default.templates, default.name

    if pack is not None and not given:
        name = pack.name if templates_file is None else f"{pack.name}+{tname}"
    else:
        name = f"labels+{tname}"
    return PromptSet(
        name=name,
        classes=classes,
        templates=templates,
        description=pack.description if pack is not None and not given else "",
        source=pack.source if pack is not None and not given else "",
        origin=pack.origin if pack is not None else " + ".join(origin),
    )
