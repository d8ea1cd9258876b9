"""The interface of a search-space family (TensorFlow-free).

A *family* is a kind of search space with its own supernet, genotype type,
derivation rules, child network and pictures: today the DAG cells of the
proxy search (`bayesnas`, `darts`; spaces/dag/) and the tree cells of the
proxyless search (`treecell_a`, `proxyless`; spaces/tree/). The rest of the
package reaches a family only through a `SearchSpaceFamily` object from
spaces/registry.py and never tests which family it holds.

A family object is stateless, and importing its module loads no TensorFlow
(main.py checks flags and genotypes before TensorFlow loads): methods that
build networks import their family's Keras modules inside the method.

Genotypes of every family share `to_dict()`, `to_json()`, `save(path)`,
`__eq__` (provenance in `search` excluded) and the class attributes
`family` (the family's `name`) and `kind` (the "kind" field of their JSON;
"cells" for the DAG genotypes, whose files carry no "kind").

The search asks one `SearchBackend` per run (`family.search_backend(config)`)
for the network and its gate layout; see that class.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.errors import GenotypeError


class SearchSpaceFamily:
  """One family of search spaces (module doc). Subclasses set the attributes
  and implement the methods that raise NotImplementedError; the others have
  defaults that read the attributes.

  Attributes:
    name: the family's name ("dag", "tree"), also `genotype.family`.
    space_names: the `--search_space` values it owns.
    genotype_kind: the "kind" its genotype.json files carry.
    genotype_type: its genotype class (with `from_dict`).
    backend_type: its `SearchBackend` class (built from the config).
    builtins: {name: genotype} of its released networks.
    supported_hessians: the `--hessian` estimators its supernets support.
    primitives: the op names `--primitives` chooses from (() when the
      family has no such choice).
    export_name: the SavedModel folder of a genotype that is not a
      built-in (a built-in names its own folder).
    benchmark: the benchmark whose tables list this family's cells (its
      genotypes have a `benchmark_key`), or None.
  """

  name: str = ""
  space_names: Tuple[str, ...] = ()
  genotype_kind: str = ""
  genotype_type: Any = None
  backend_type: Any = None
  builtins: Mapping[str, Any] = {}
  supported_hessians: Tuple[str, ...] = ()
  primitives: Tuple[str, ...] = ()
  export_name: str = "bayesnas"
  benchmark: Optional[str] = None

  # --- flags, configurations, genotypes (TensorFlow-free) -------------------
  def check_supernet(self, supernet: "SupernetConfig") -> None:
    """Raises ConfigError for supernet settings this family cannot build."""
    raise NotImplementedError

  def hessian_methods(self, space_name: str) -> Tuple[str, ...]:
    """The `--hessian` estimators the supernet of `space_name` supports."""
    del space_name
    return self.supported_hessians

  def check_hessian(self, space_name: str, method: str) -> None:
    """Raises ConfigError when `method` is not in `hessian_methods`."""
    methods = self.hessian_methods(space_name)
    if method not in methods:
      raise ConfigError(
          f"--hessian={method} is not available for the {self.name} search "
          f"space {space_name!r}; use one of {', '.join(methods)}")

  def builtin_genotypes(self) -> Mapping[str, Any]:
    """{name: genotype} of the released networks `--genotype` may name."""
    return self.builtins

  def genotype_from_dict(self, data: Mapping[str, Any]) -> Any:
    """A validated genotype from its JSON object (GenotypeError if bad)."""
    return self.genotype_type.from_dict(data)

  def parse_genotype_text(self, text: str) -> Optional[Any]:
    """A genotype from a family-specific string form, or None."""
    del text
    return None

  def mode_defaults(self, mode: str) -> Mapping[str, Any]:
    """{option: value} this family brings as defaults of `mode` (a search
    or study of one of its spaces, a retrain of one of its genotypes); any
    flag overrides them (config.experiment.config_from_values)."""
    del mode
    return {}

  def benchmark_key(self, genotype) -> str:
    """The genotype's key (`arch`) in a table of `benchmark`."""
    raise NotImplementedError

  # --- the search -------------------------------------------------------------
  def search_backend(self, config: "ExperimentConfig") -> "SearchBackend":
    """The backend of one search run (see `SearchBackend`)."""
    return self.backend_type(config)

  def pictures(self, genotype) -> Tuple[Dict[str, bytes], Optional[str]]:
    """({name: PNG bytes}, None) of the genotype's diagrams for TensorBoard,
    or ({}, why not) when none can be drawn; ({}, None): the family draws
    no TensorBoard pictures."""
    del genotype
    return {}, None

  # --- retrain, transfer, export, study ---------------------------------------
  def build_child_network(self, train: "TrainConfig", genotype,
                          num_classes: int, image_shape: Sequence[int]):
    """The built Keras model of `genotype` for --mode=retrain/transfer."""
    raise NotImplementedError

  def default_model_name(self, genotype_name: str) -> Optional[str]:
    """The export folder of `--genotype=genotype_name` (a built-in name
    names its folder); None: not one of this family's names."""
    return genotype_name if genotype_name in self.builtin_genotypes() else None

  def op_counts(self, genotype) -> Dict[str, int]:
    """Ops kept per cell type (--mode=study's table)."""
    raise NotImplementedError

  def check_study(self, space_name: str) -> None:
    """Raises ConfigError when --mode=study cannot draw random genotypes of
    `space_name` (checked before its first search)."""
    raise ConfigError(
        f"--mode=study cannot draw random genotypes of the search space "
        f"{space_name!r}; use one of the spaces whose family has a sampler")

  def random_genotype_like(self, genotype, supernet: "SupernetConfig", rng,
                           metadata: Optional[Mapping[str, Any]] = None):
    """A uniformly random genotype of the same space with `genotype`'s
    `op_counts` (--mode=study's control group)."""
    raise NotImplementedError


class SearchBackend:
  """What the search loop needs to know about the network it searches.

  Attributes:
    space: answers `space.cell(cell_type)` with the cell layout of that type:
      `edges` (one per gated edge), `edge_names` and
      `predecessor_edges(e)` (the gated edges entering e's source, eq. 8).
    gate_names: the names of the G gate columns of the prior's (E, G)
      arrays (posterior.json's "gate").

  Methods (subclasses implement them):
    gate_lambdas() -> (G,) float64: lambda of each gate column (eq. 21).
    build_network(num_classes, image_shape, name) -> a built supernet that
      follows the gated supernet protocol (layers/gated.py).
    metadata() -> dict: the supernet's sizes, stored in the genotype.
    kept_ops(masks) -> {cell type: ops kept}, from (E, G) kept masks.
    summary(net) -> {name: count} that --summary_only prints.
    derive(kept, posterior, metadata) -> the genotype of the kept masks;
      `posterior` is {cell type: {"gamma", "omega", "switch", "kept":
      (E, G); "w", "hessian", "hessian_scaled", "covariance": (n, E, G)}}
      (numpy), so a family may rank ops by their posterior.
    write_pictures(genotype, out_dir) -> the paths written.
  """

  space: Any = None
  gate_names: Tuple[str, ...] = ()
  # Algorithm 1's w(0): the op gates' initial value (the prune threshold is
  # read in units of it, search_loop.py).
  gate_init: float = 1.0


# Supernet options that only some families read (None: unset).
GATE_AND_BN_OPTIONS = ("bn_affine", "gate_init")


def refuse_unset_options(supernet: "SupernetConfig", names: Sequence[str],
                         family: str) -> None:
  """A family that does not read an option refuses it rather than ignore it."""
  for name in names:
    if getattr(supernet, name) is not None:
      raise ConfigError(
          f"--{name} does not apply to --search_space={supernet.search_space} "
          f"(the {family} family keeps the paper's affine BNs and w(0) = 1)")


def op_and_edge_lambdas(num_ops: int, lambda_child: float,
                        lambda_origin: float) -> np.ndarray:
  """(num_ops + 1,) lambdas: each op gate lambda_child, the edge gate w_all
  (the last column) lambda_origin (eq. 21)."""
  return np.array([lambda_child] * num_ops + [lambda_origin], dtype=np.float64)


def check_known(names: Sequence[str], valid: Sequence[str],
                kind: str) -> Tuple[str, ...]:
  """`names` as a tuple; raises ConfigError if one is not in `valid`."""
  names = tuple(names)
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise ConfigError(f"unknown {kind}(s) {', '.join(unknown)}; "
                      f"valid {kind}s are {', '.join(valid)}")
  return names


def check_registry(registry: Sequence[str], names: Sequence[str], what: str) -> None:
  """Raises if a layer registry's names differ from (or reorder) `names`."""
  if tuple(registry) != tuple(names):
    raise ImportError(f"{what} registry {tuple(registry)} differs from "
                      f"op_names {tuple(names)}")


def check_schema_version(version: Any, newest: int, kind: str = "") -> int:
  """A genotype's schema_version, checked: a positive integer this code
  reads (`newest` or older); GenotypeError otherwise."""
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise GenotypeError(
        f"genotype schema_version must be a positive integer; received {version!r}")
  if version > newest:
    reads = f"{kind} " if kind else ""
    raise GenotypeError(
        f"genotype schema_version {version} was written by a newer bayesnas_tf "
        f"(this one reads {reads}up to {newest}); upgrade bayesnas_tf")
  return version
