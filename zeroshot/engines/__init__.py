"""Engines: the local one (``local``: this process and its decoding workers, for every face) and
Ray Data (``distributed``, ``raysession``)."""
