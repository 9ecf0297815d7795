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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..base.errors import PromptError, UnknownDatasetError
from ..base.options import current_face, named, worded

# Re-exported: the names users and classifier files know this module by.
from .promptcheck import MAX_LABEL_CHARS as MAX_LABEL_CHARS
from .promptcheck import PLACEHOLDER as PLACEHOLDER
from .promptcheck import ClassPrompts as ClassPrompts
from .promptcheck import check_strings, class_entry, validate_class_entries, validate_templates
from .promptcheck import render as render
from .promptcheck import validate_classes as validate_classes

PACK_KEYS = {"name", "description", "source", "aliases", "classes", "templates"}
DEFAULT_PACK = "default"


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
    aliases = tuple(check_strings(data["aliases"], "alias", where, allow_empty=True)) if "aliases" in data else ()
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
    entries = [class_entry(item, i, str(path)) for i, item in enumerate(data, 1)]
    return [name for name, _ in entries], [spec for _, spec in entries]


# --- packs ------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


# A source checkout run without installing (``python -c "import zeroshot"`` at its top) has no
# zeroshot.prompt_packs package: the packs are the checkout's prompts/, beside the package folder.
CHECKOUT_PACKS = Path(__file__).resolve().parents[2] / "prompts"


def pack_dir() -> Path:
    """Where the bundled packs are: inside the installed package, or the checkout's prompts/."""
    try:
        root = importlib.resources.files("zeroshot.prompt_packs")
        path = Path(str(root))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError):  # a source checkout, not installed
        pass
    return CHECKOUT_PACKS


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
        if not packs:
            raise UnknownDatasetError(
                f"unknown dataset '{name}': no prompt packs were found (looked in {pack_dir()}; is zeroshot "
                "installed whole?)"
            )
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
        origin.append(named("labels") if current_face() != "cli" else "--label")
    pack = load_pack(dataset) if dataset else None

    specs: tuple[ClassPrompts | None, ...] = ()
    if given:
        classes = validate_classes(given, " + ".join(origin))
        specs = tuple(given_specs) if any(s is not None for s in given_specs) else ()
    elif pack is not None and pack.classes:
        classes, specs = pack.classes, pack.specs
    elif pack is not None:
        give = worded(cli="give --labels FILE or --label TEXT", library="give labels (a list of names) or labels_file")
        raise PromptError(f"{pack.origin}: pack '{pack.name}' has no classes; {give}")
    else:
        give = worded(
            cli="give --labels FILE, --label TEXT (repeatable) or --dataset NAME",
            library="give labels (a list of names), labels_file (a file of them) or dataset (a prompt pack's name)",
        )
        raise PromptError(f"no classes: {give}")

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
