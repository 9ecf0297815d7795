"""``zeroshot serve``: the HTTP face over the one assembly."""
