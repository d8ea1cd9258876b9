"""The BayesNAS search, the same for every search space.

What lives here: the HARD prior and its update (prior.py, eq. 17-21), the
gate Hessian estimators (hessian.py), the search loop with its checkpoints
and outputs (search_loop.py), the warnings of a finished search
(diagnostics.py) and its TensorBoard summaries (summaries.py).

What it may import: the packages below it (errors, io_utils, nn, layers,
config, runtime, data) and, of the search spaces, only
`bayesnas_tf.spaces.registry` and `bayesnas_tf.spaces.base`: the network,
its gate layout, the genotype and the pictures come from the family of
--search_space through its `SearchBackend`, never from a family package.
Never the modes.
"""
