"""How ``--help`` groups the options and which examples close each command's help.

One table for every command, keyed by flag: an option means the same in each command that takes
it (``--batch-size`` is a speed choice in classify, eval and adapt alike), so each command's help
shows the same groups in the same order. :func:`dress` writes the groups and the examples onto
the registered commands before Typer builds them; ``tests/test_docs_cli.py`` checks that every
option of every command is in a group, and the manual's CLI reference is generated from the result.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

INPUT, TEXT, MODEL, SCORING, OUTPUT = "Input", "Classes and prompts", "Model", "Scoring", "Output"
VIDEOS, SPEED, CACHE, LIMITS, ENGINE, FEW_SHOT, SERVER = (
    "Videos", "Speed", "Cache", "Limits", "Engine", "Few-shot", "Server"
)  # fmt: skip
HELP = "Help"
# The order the groups are shown in: what to classify, against what, with which model, how records
# decide and where they go first; tuning after.
ORDER = (INPUT, TEXT, MODEL, SCORING, OUTPUT, VIDEOS, SPEED, CACHE, LIMITS, ENGINE, FEW_SHOT, SERVER)

PANELS: dict[str, str] = {
    # input
    "--null": INPUT, "--data-dir": INPUT, "--split": INPUT, "--limit": INPUT,
    # classes and prompts
    "--labels": TEXT, "--label": TEXT, "--dataset": TEXT, "--templates": TEXT, "--classifier": TEXT,
    # model
    "--model": MODEL, "--pretrained": MODEL, "--preprocess": MODEL, "--device": MODEL, "--precision": MODEL,
    "--runtime": MODEL,
    # how records decide
    "--top-k": SCORING, "--multi-label": SCORING, "--threshold": SCORING, "--calibration": SCORING,
    "--background": SCORING, "--min-score": SCORING,
    # output
    "--format": OUTPUT, "--output": OUTPUT, "--report": OUTPUT, "--manifest": OUTPUT, "--resume": OUTPUT,
    "--calibrate": OUTPUT, "--quiet": OUTPUT,
    # videos
    "--every": VIDEOS, "--max-frames": VIDEOS, "--per-video": VIDEOS, "--animated-as-video": VIDEOS,
    # speed
    "--batch-size": SPEED, "--workers": SPEED, "--decoder": SPEED, "--jpeg-draft": SPEED, "--max-batch": SPEED,
    "--max-wait-ms": SPEED,
    # cache
    "--no-cache": CACHE, "--cache-images": CACHE, "--force": CACHE, "--text-cache": CACHE,
    # limits
    "--max-pixels": LIMITS, "--max-bytes": LIMITS, "--max-video-bytes": LIMITS, "--timeout": LIMITS,
    "--max-queue": LIMITS, "--max-body-bytes": LIMITS, "--max-images": LIMITS,
    # where it runs
    "--engine": ENGINE, "--ray-address": ENGINE, "--gpus-per-worker": ENGINE, "--cpus-per-worker": ENGINE,
    "--server": ENGINE,
    # few-shot
    "--shots": FEW_SHOT, "--seeds": FEW_SHOT, "--train": FEW_SHOT, "--seed": FEW_SHOT,
    # serve
    "--host": SERVER, "--port": SERVER, "--api-key": SERVER, "--allow-urls": SERVER,
    "--allow-private-urls": SERVER, "--cors-origin": SERVER, "--drain-timeout": SERVER,
}  # fmt: skip

# Commands whose few options need no groups: their help keeps Typer's one "Options" panel.
UNGROUPED = ("models", "datasets", "cache")

# Each command's examples, shown after its options: what a user would type. The ones naming
# fashion-mini and examples/ run offline in a clone; the manual's pages hold the examples the suite runs.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (  # zeroshot --help
        "zeroshot classify photos/ --label cat --label dog",
        "zeroshot classify examples/fashion -m fashion-mini -d fashion-mnist -f table",
        "zeroshot datasets",
        "zeroshot COMMAND --help",
    ),
    "classify": (
        "zeroshot classify photos/ --label cat --label dog",
        "zeroshot classify photos/ --dataset cifar10 -o labels.jsonl",
        "zeroshot classify examples/fashion -m fashion-mini --dataset fashion-mnist -f table",
        "find photos -name '*.jpg' -print0 | zeroshot classify -0 - --labels labels.txt",
        "zeroshot classify clips/ --labels labels.txt --every 2 --per-video",
    ),
    "build-prompts": (
        "zeroshot build-prompts --dataset imagenet",
        "zeroshot build-prompts -m fashion-mini --dataset fashion-mnist -o fashion.safetensors",
    ),
    "eval": (
        "zeroshot eval labelled/ --report eval.html",
        "zeroshot eval --dataset fashion-mnist -m fashion-mini --limit 1000",
        "zeroshot eval labelled/ --calibrate cal.json",
        "zeroshot eval labelled/ --shots 8 --seeds 5",
    ),
    "adapt": (
        "zeroshot adapt my-examples/ --dataset cifar10 -o adapted.safetensors",
        "zeroshot classify photos/ --classifier adapted.safetensors",
    ),
    "models": (
        "zeroshot models --sort top1 | head",
        'zeroshot models --family "SigLIP 2" --sort size',
    ),
    "datasets": (
        "zeroshot datasets",
        "zeroshot datasets --json | jq -r .name",
    ),
    "cache": (
        "zeroshot cache",
        "zeroshot cache clear",
    ),
    "serve": (
        "zeroshot serve -m ViT-B-32 -p openai",
        "zeroshot serve -m fashion-mini --port 8080 --api-key KEY --host 0.0.0.0",
        "zeroshot classify photos/ --dataset cifar10 --server http://127.0.0.1:8000",
    ),
}


def epilog(command: str) -> str:
    """The examples as Typer prints an epilog: a heading, then one line each (Typer's rich help keeps
    single line breaks inside a paragraph). ``[`` is escaped as rich markup wants, without importing
    rich for commands that print no help."""
    return "Examples:\n\n" + "\n".join("  $ " + line.replace("[", "\\[") for line in EXAMPLES[command])


class GroupedCommand(TyperCommand):
    """A command whose options are shown in :data:`PANELS`' groups, in :data:`ORDER`. Set as each
    command's class by :func:`dress`, so every build of the app (the console script, ``CliRunner``)
    shows the same help. Regrouping only reorders the options (arguments keep their order and Typer's "Arguments" box):
    Typer shows a panel where it first meets one of its options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperOption) and param.rich_help_panel is None:
                param.rich_help_panel = PANELS.get(long_flag(param.opts))
        rank = {panel: i for i, panel in enumerate(ORDER)}

        def place(param: Any) -> int:
            return -1 if isinstance(param, TyperArgument) else rank.get(getattr(param, "rich_help_panel", "") or "", 99)

        self.params.sort(key=place)

    def get_help_option(self, ctx: Any) -> Any:
        # -h/--help last, in a group of its own, rather than alone in a first "Options" box
        option = super().get_help_option(ctx)
        if option is not None:
            option.rich_help_panel = HELP
        return option


def long_flag(opts: list[str]) -> str:
    return next((o for o in opts if o.startswith("--")), "")


def dress(app: typer.Typer) -> None:
    """Give every registered command its examples and, unless it is one of :data:`UNGROUPED`, its
    option groups (:class:`GroupedCommand`). Idempotent. An option missing from :data:`PANELS`
    stays in Typer's "Options" panel (the test names it)."""
    app.info.epilog = epilog("")
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        if name in EXAMPLES:
            info.epilog = epilog(name)
        if name not in UNGROUPED and info.cls in (None, TyperCommand):  # Typer's decorator fills in its own
            info.cls = GroupedCommand
