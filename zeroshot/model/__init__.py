"""The model: which checkpoint a name means (``models``: specs, loading through open_clip, the
bundled fashion-mini), on which device and precision (``devices``), its weights' identity and the
unsafe-pickle check (``weightfiles``), the Hub (``hub``, ``loadfailure``), a fast load
(``fastload``), a checkpoint file's preprocessing (``preprocessing``) and the catalog of families
(``catalog``, ``tables/``). Imports only ``base``."""
