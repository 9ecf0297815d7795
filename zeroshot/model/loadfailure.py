"""Why a model did not load, in one line that names the cause: an unknown name (a usage error), a
missing package (the [hf] extra), a download that broke off, and the Hub's three failures (not
found, no network, offline mode), told apart by :func:`zeroshot.model.hub.failure_cause`."""

from __future__ import annotations

from ..base.errors import ModelLoadError, UnknownModelError
from ..base.options import named
from .hub import NO_NETWORK, NOT_FOUND, OFFLINE_MODE, failure_cause, hub_endpoint
from .weightfiles import Weights, first_line


def unknown_model(name: str) -> UnknownModelError:
    import difflib

    import open_clip

    close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return UnknownModelError(
        f"unknown model '{name}'{hint}; `zeroshot models` lists the architectures, or use hf-hub:ORG/REPO"
    )


# Packages some model families need beyond the default install, and why (the [hf] extra).
HF_PACKAGES = {"transformers": "Hugging Face tokenizer or text tower", "sentencepiece": "SentencePiece vocabulary"}
HF_INSTALL = "pip install 'transformers>=4.40' 'sentencepiece>=0.2'"


def load_failure(
    spec: Weights, e: BaseException, *, user_offline: bool, unreachable: bool, broken: str | None = None
) -> ModelLoadError:
    """The one-line error for a load of ``spec`` that raised ``e``: ``user_offline`` when
    ``HF_HUB_OFFLINE`` was set before the load, ``unreachable`` when the probe found no Hub, ``broken``
    the file whose download broke off, if one did."""
    what = spec.label
    if broken is not None:
        return ModelLoadError(
            f"the download of {broken} for {what} broke off ({first_line(e, 160)}); run again to resume it"
        )
    missing = missing_package(e)
    if missing is not None:
        need = HF_PACKAGES.get(missing, "a package it imports")
        return ModelLoadError(
            f"{what} needs the '{missing}' package ({need}), which is not installed: {HF_INSTALL} "
            "(zeroshot-clip's [hf] extra)"
        )
    if spec.kind in ("tag", "hf-hub"):
        cause = failure_cause(e, user_offline=user_offline, unreachable=unreachable)
        if cause is not None and cause[0] == NOT_FOUND:
            return ModelLoadError(
                f"cannot download {what}: the Hugging Face Hub ({hub_endpoint()}) has no {cause[1]} "
                + ("(check the repository id)" if spec.kind == "hf-hub" else "(`zeroshot models` lists the tags)")
            )
        if cause is not None and cause[0] == OFFLINE_MODE:
            return ModelLoadError(
                f"cannot load {what}: HF_HUB_OFFLINE is set and its files are not in the local Hugging Face "
                f"cache; unset HF_HUB_OFFLINE to download them, or pass a local checkpoint with {named('pretrained')} "
                "FILE"
            )
        if cause is not None and cause[0] == NO_NETWORK:
            return ModelLoadError(
                f"cannot download the weights for {what}: no network connection ({hub_endpoint()} cannot be "
                "reached) and they are not in the local Hugging Face cache; run once with a network, or pass a "
                f"local checkpoint with {named('pretrained')} FILE"
            )
        return ModelLoadError(
            f"cannot load the weights for {what}: {first_line(e)} (a local checkpoint can be passed with "
            f"{named('pretrained')} FILE)"
        )
    return ModelLoadError(f"cannot load {what}: {first_line(e)}")


def missing_package(e: BaseException) -> str | None:
    """The top-level package whose absence caused ``e`` (an ImportError, or transformers' own
    "requires the ... library" errors), if any."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError) and getattr(e, "name", None):
            return str(e.name).split(".")[0]
        text = str(e)
        for name in HF_PACKAGES:
            if f"requires the {name.capitalize()} library" in text or f"requires the {name} library" in text:
                return name
            if f"No module named '{name}'" in text:
                return name
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None
