"""Prompt sets: class names plus the templates that turn each into prompts.

A prompt pack is a YAML file::

    name: cifar10
    description: CIFAR-10, 10 classes of small natural images
    source: where the class names and templates come from
    aliases: [cifar-10]            # optional other names for --dataset
    classes: [airplane, automobile, ...]
    templates:
      - "a photo of a {label}."

Every ``{label}`` in a template is replaced by the class name; no other substitution happens, so
braces elsewhere in a template are kept as they are.

A class may also be a mapping, for prompts of its own (CuPL-style)::

    - name: crane (bird)           # what records show
      text: crane, a type of bird  # what {label} becomes (a list: every text x every template)
      extra: ["a tall wading bird with a long neck."]   # prompts added to the templated ones
    - name: other
      prompts: ["...", "..."]      # this class's only prompts: the templates are not used

A class's embedding is the normalized mean of the normalized embeddings of exactly its prompts.
This module does not import torch.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import PromptError, UnknownDatasetError

PLACEHOLDER = "{label}"
PACK_KEYS = {"name", "description", "source", "aliases", "classes", "templates"}
CLASS_KEYS = {"name", "text", "extra", "prompts"}
DEFAULT_PACK = "default"
# Guards against a file that is not a labels file at all (a binary, a whole corpus).
MAX_LABEL_CHARS = 1000


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


@dataclass(frozen=True)
class PromptSet:
    """Class names and the templates that are averaged into each class's embedding.

    ``specs`` is empty when every class is prompted by its name in every template; otherwise it has
    one entry per class, ``None`` for such plain classes and a :class:`ClassPrompts` for the others.
    """

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    description: str = ""
    source: str = ""
    origin: str = field(default="", compare=False)  # file it came from, for messages
    specs: tuple[ClassPrompts | None, ...] = ()
    aliases: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.specs and len(self.specs) != len(self.classes):
            raise ValueError(f"{len(self.specs)} class specs for {len(self.classes)} classes")
        if self.specs and all(s is None for s in self.specs):
            object.__setattr__(self, "specs", ())

    @property
    def uniform(self) -> bool:
        """Every class prompted by its name in every template (the plain CLIP ensemble)."""
        return not self.specs

    def spec(self, index: int) -> ClassPrompts | None:
        return self.specs[index] if self.specs else None

    def prompts_for(self, label: str) -> list[str]:
        """The prompt texts of one class: its templated prompts, then its extra ones."""
        spec = self.spec(self.classes.index(label)) if label in self.classes else None
        return [prompt for _, prompt in (spec or ClassPrompts()).rows(label, self.templates)]

    def class_rows(self) -> list[list[tuple[int | None, str]]]:
        """Each class's (template index or None, prompt) pairs, in class order."""
        plain = ClassPrompts()
        return [(self.spec(i) or plain).rows(name, self.templates) for i, name in enumerate(self.classes)]

    def class_prompts(self) -> list[list[str]]:
        """Each class's prompts, in class order."""
        return [[prompt for _, prompt in rows] for rows in self.class_rows()]

    def all_prompts(self) -> list[str]:
        """Every prompt, class-major: class 0's, then class 1's, ..."""
        return [p for prompts in self.class_prompts() for p in prompts]

    def prompt_count(self) -> int:
        return sum(len(p) for p in self.class_prompts()) if self.specs else len(self.classes) * len(self.templates)

    def specs_data(self) -> dict[str, Any]:
        """The non-plain classes' prompting, by class name (empty for a uniform set)."""
        return {self.classes[i]: s.as_data() for i, s in enumerate(self.specs) if s is not None}

    def with_templates(self, templates: tuple[str, ...], name: str | None = None) -> PromptSet:
        """The same classes and per-class prompting with other templates."""
        return replace(self, templates=templates, name=name if name is not None else self.name)


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


def _string_or_list(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    return _check_strings(value, what, where)


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


def _class_entry(item: Any, number: int, where: str) -> tuple[Any, ClassPrompts | None]:
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
    entries = [_class_entry(item, i, where) for i, item in enumerate(items, 1)]
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
    aliases = tuple(_check_strings(data["aliases"], "alias", where, allow_empty=True)) if "aliases" in data else ()
    specs: tuple[ClassPrompts | None, ...] = ()
    if "classes" in data:
        classes, specs = validate_class_entries(data["classes"], where)
    elif require_classes:
        raise PromptError(f"{where}: missing 'classes'")
    else:
        classes = ()
    if "templates" not in data:
        if not specs or any(s is None or s.prompts is None for s in specs):
            raise PromptError(f"{where}: missing 'templates'")
        templates: tuple[str, ...] = ()  # every class brings its own prompts
    else:
        templates = validate_templates(data["templates"], where)
    return PromptSet(
        name=name.strip(),
        classes=classes,
        templates=templates,
        description=" ".join(str(data.get("description", "")).split()),
        source=" ".join(str(data.get("source", "")).split()),
        origin=where,
        specs=specs,
        aliases=aliases,
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


def read_label_entries(path: str | Path) -> tuple[list[Any], list[ClassPrompts | None]]:
    """Classes from a labels file: a text file (one per line) or, for .yaml/.yml, a YAML list of
    class entries (names, or mappings with per-class prompts as in a pack; a mapping with
    'classes' is read the same way)."""
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        labels = read_labels_file(path)
        return labels, [None] * len(labels)
    data = _load_yaml(path)
    if isinstance(data, dict):
        if "classes" not in data:
            raise PromptError(f"{path}: expected a list of classes, or a mapping with 'classes'")
        data = data["classes"]
    if not isinstance(data, list) or not data:
        raise PromptError(f"{path}: expected a non-empty list of classes")
    entries = [_class_entry(item, i, str(path)) for i, item in enumerate(data, 1)]
    return [name for name, _ in entries], [spec for _, spec in entries]


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


def _pack_aliases(path: Path) -> list[str]:
    """A pack file's 'aliases' without validating the rest (for name look-ups)."""
    with contextlib.suppress(PromptError):
        data = _load_yaml(path)
        if isinstance(data, dict) and isinstance(data.get("aliases"), list):
            return [a for a in data["aliases"] if isinstance(a, str)]
    return []


def find_pack(name: str) -> Path | None:
    """The bundled pack file called ``name`` (or having it as an alias), case- and '-'/'_'-insensitive."""
    packs = list_packs()
    by_norm = {_norm(k): v for k, v in packs.items()}
    path = by_norm.get(_norm(name))
    if path is None:
        for candidate in packs.values():
            if _norm(name) in {_norm(a) for a in _pack_aliases(candidate)}:
                return candidate
    return path


def load_pack(name: str) -> PromptSet:
    """A bundled pack by name or alias (case- and '-'/'_'-insensitive), or a pack file by path."""
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return load_pack_file(name, require_classes=False)
    path = find_pack(name)
    if path is None:
        packs = list_packs()
        known = ", ".join(k for k in packs if k != DEFAULT_PACK)
        names = [_norm(k) for k in packs] + [_norm(a) for p in packs.values() for a in _pack_aliases(p)]
        close = difflib.get_close_matches(_norm(name), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownDatasetError(f"unknown dataset '{name}'{hint}; known ones are: {known}")
    return load_pack_file(path, require_classes=False)


def datasets() -> list[PromptSet]:
    """Every bundled pack that has classes (the datasets), sorted by name."""
    packs = [load_pack_file(path, require_classes=False) for path in list_packs().values()]
    return [p for p in packs if p.classes]


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
    Per-class prompts come with the classes (a pack's, or a YAML labels file's).
    """
    given: list[Any] = []
    given_specs: list[ClassPrompts | None] = []
    origin = []
    if labels_file is not None:
        names, file_specs = read_label_entries(labels_file)
        given += names
        given_specs += file_specs
        origin.append(str(labels_file))
    extra = list(labels)
    if extra:
        given += extra
        given_specs += [None] * len(extra)
        origin.append("--label")
    pack = load_pack(dataset) if dataset else None

    specs: tuple[ClassPrompts | None, ...] = ()
    if given:
        classes = validate_classes(given, " + ".join(origin))
        specs = tuple(given_specs) if any(s is not None for s in given_specs) else ()
    elif pack is not None and pack.classes:
        classes, specs = pack.classes, pack.specs
    elif pack is not None:
        raise PromptError(f"{pack.origin}: pack '{pack.name}' has no classes; give --labels FILE or --label TEXT")
    else:
        raise PromptError("no classes: give --labels FILE, --label TEXT (repeatable) or --dataset NAME")

    if templates_file is not None:
        templates = load_templates_file(templates_file)
        tname = Path(templates_file).stem
    elif pack is not None and (pack.templates or not given):
        templates, tname = pack.templates, pack.name
    else:
        default = load_pack(DEFAULT_PACK)
        templates, tname = default.templates, default.name
    if not templates and any(s is None or s.prompts is None for s in specs or [None]):
        raise PromptError(f"{tname}: no templates for classes that do not bring their own prompts")

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
        specs=specs,
    )
