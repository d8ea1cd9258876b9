"""The tree-cell family (`--search_space=treecell_a`, `proxyless`): the
proxyless search in a bottleneck PyramidNet (PROXYLESS.md).

Files: family.py (the family object `FAMILY` and the search backend),
space.py (tree cells and PyramidNet widths as data), op_names.py (the tree
ops' names, TensorFlow-free) and ops.py (their Keras layers), genotype.py
(pyramid_tree genotypes: the whole network as JSON data, the built-in
networks), tree_cell.py (`TreeEdge`, `TreeCell`), pyramid_tree.py (the
supernet `PyramidTreeSuperNet` and the derived `PyramidTreeNet`), derive.py
(kept masks -> genotype) and visualize.py (DOT pictures of the cells).

What it may import: see bayesnas_tf/spaces/__init__.py. This file imports
nothing, so the TensorFlow-free modules stay TensorFlow-free.
"""
