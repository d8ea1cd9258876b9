"""The NAS-Bench-201 cell space (../shared/NB201.md) as a search space.

space.py (the DAG and op names), genotype.py (the benchmark string, JSON,
parameter counts), ops.py, cell.py and network.py (the Keras layers of the
supernet and of the benchmark's networks), derive.py (one op per edge from
the posterior), visualize.py, family.py (what the search loop reads).
"""
