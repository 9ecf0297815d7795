"""Engines that run the assembly somewhere else than this process: Ray Data (``distributed``,
``raysession``). The local engine is the CLI's own loop (``cli/engine_local.py``)."""
