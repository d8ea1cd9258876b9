"""Training a derived network, and exporting it.

What lives here: the retrain / transfer loop (train.py: `Trainer`), the
Keras callbacks for users who `fit` a derived network themselves
(callbacks.py: `DropPathSchedule`) and versioned SavedModel export
(export.py).

What it may import: the packages below it (errors, io_utils, nn, config,
runtime, data); never the search spaces' families, the search or the modes:
it trains whatever Keras model it is given.
"""
