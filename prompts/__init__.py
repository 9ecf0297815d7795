"""Prompt packs (YAML). Installed as the package data ``zeroshot.prompt_packs``."""
