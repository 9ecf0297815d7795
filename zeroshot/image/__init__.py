"""CLIP's image side up to the model's pixels: bytes (``reading``: files, URLs, caps), inputs
(``images``: walks, stdin; ``video``, ``videodecode``: frames), decoding in worker processes
(``decoding``, ``tensordecode``, ``streams``), labelled IDX arrays (``idx``) and the
image-embedding cache (``imagecache``). Imports ``model`` and ``base``; never the text side, the
towers' runtimes or the uses."""
