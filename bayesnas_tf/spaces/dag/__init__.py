"""The DAG-cell family (`--search_space=bayesnas`, `darts`): the proxy search.

Files: family.py (the family object `FAMILY` and the search backend),
space.py (the cell DAGs as data), op_names.py (the 7 primitives, TensorFlow-
free) and ops.py (their Keras layers; the op set "darts"), genotype.py
(normal and reduction cells as JSON data, the released cells), the layers
channel_reduce.py, bayes_cell.py (`BayesCell`: a cell of SwitchedEdges) and
child_cell.py, the networks supernet.py (`SuperNet`) and child_net.py
(`ChildNetwork`), derive.py (kept masks -> genotype), visualize.py (cell
pictures), diag_backprop.py (the shadow network of --hessian=diag_backprop)
and sampling.py (random genotypes for --mode=study).

What it may import: see bayesnas_tf/spaces/__init__.py. This file imports
nothing, so the TensorFlow-free modules stay TensorFlow-free.
"""
