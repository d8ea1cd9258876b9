"""Search spaces as plug-ins: one package per family, behind one interface.

What lives here: the interface every family answers (base.py:
`SearchSpaceFamily`, `SearchBackend`), the registry from `--search_space`
names to families and from genotype.json files to genotypes of any family
(registry.py), and one subpackage per family: dag/ (the DAG cells of the
proxy search: bayesnas, darts) and tree/ (the tree cells of the proxyless
search: treecell_a, proxyless). README "Adding a search space" lists what a
new family adds.

What it may import: base.py and registry.py import only `bayesnas_tf.errors`
and `bayesnas_tf.io_utils` (TensorFlow-free: main.py checks flags and
genotypes with them before TensorFlow loads); the registry imports the
families by name. A family package imports `errors`, `io_utils`, `nn`,
`layers`, `spaces.base` and, inside functions, `spaces.registry`; never
`config`, `runtime`, `data`, `search`, `compress`, `training` or `modes`
(it reads the configuration sections it is given by their attributes), and
no other family.
"""
