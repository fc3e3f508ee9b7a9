"""The Python-backend models (thin pb_utils layers over the library)."""

import gc


def heap_settled() -> None:
    """The end of a model's `initialize`. Its generated model.py turned the cyclic collector off before the imports:
    they and the load make millions of long-lived objects and no garbage worth the scans (~15% of a stub's start-up
    CPU). What they made now moves out of the collector's sight for good (gc.freeze), and it runs as usual again,
    over the requests' objects only."""
    gc.freeze()
    gc.enable()
