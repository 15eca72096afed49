"""``python -m alchemist_pl.corruption SRC DST``: build a planted pool (:func:`alchemist_pl.corruption.pool.main`)."""

from .pool import main

main()
