"""CLIP's text side: prompt packs and labels (``prompts``, ``promptcheck``) become a text
classifier, the averaged and normalized prompt embeddings (``classifier``, cached through
``base.cache``), with exact shortcuts through the text tower (``texttower``). Imports ``model`` and
``base``; never the image side, the towers' runtimes or the uses."""
