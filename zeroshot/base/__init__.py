"""What every other part stands on: the error types users see (``errors``), files written whole
(``files``: atomic writes, the destinations users name) and the cache folder with its keys and the
text classifier's entry format (``cache``). Imports nothing else of zeroshot."""
