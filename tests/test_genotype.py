"""Tests for bayesnas_tf.genotype: schema, validation, built-ins, resolution."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.registry import resolve_genotype

# Ops per node, counted from ALGORITHM.md 6 (normal, reduce).
EXPECTED_COUNTS = {
    "bayesnas_l0.01": ([5, 2, 2, 1], [5, 2, 2, 1]),
    "bayesnas_l0.007": ([2, 2, 2, 4], [6, 2, 3, 2]),
    "bayesnas_l0.005": ([3, 2, 3, 2], [5, 3, 2, 3]),
    "bayesnas_imagenet": ([5, 2, 2, 1], [5, 2, 2, 1]),
}


def _valid_dict():
  return KNOWN_GENOTYPES["bayesnas_l0.01"].to_dict()


# --- built-ins ----------------------------------------------------------------
def test_known_genotypes_are_exactly_the_released_ones():
  assert set(KNOWN_GENOTYPES) == set(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_builtin_op_counts_per_node(name):
  genotype = KNOWN_GENOTYPES[name]
  normal, reduce = EXPECTED_COUNTS[name]
  assert [len(node) for node in genotype.normal] == normal
  assert [len(node) for node in genotype.reduce] == reduce
  assert genotype.num_nodes == 4
  assert genotype.degenerate_nodes("normal") == []
  assert genotype.degenerate_nodes("reduce") == []


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_builtin_json_round_trip(name, tmp_path):
  genotype = KNOWN_GENOTYPES[name]
  text = genotype.to_json()
  revived = Genotype.from_json(text)
  assert revived == genotype
  assert revived.size_reduct == genotype.size_reduct
  assert revived.search == genotype.search
  # Stable: serialising the revived genotype gives the same bytes.
  assert revived.to_json() == text
  assert json.loads(text)["schema_version"] == 1
  path = tmp_path / "genotype.json"
  genotype.save(path)
  assert Genotype.load(path) == genotype
  assert Genotype.load(path).to_json() == text


def test_builtin_details_match_algorithm_md():
  l001 = KNOWN_GENOTYPES["bayesnas_l0.01"]
  assert l001.normal[0] == (("sep5", "in0"), ("sep5", "in1"), ("max", "in1"),
                            ("avg", "in1"), ("id", "in1"))
  assert l001.normal[3] == (("avg", "n0"),)
  assert l001.reduce[3] == (("sep5", "n0"),)
  assert l001.size_reduct == "conv"
  # The 0.007 normal n1 follows the forward pass: no max(in1).
  l0007 = KNOWN_GENOTYPES["bayesnas_l0.007"]
  assert l0007.normal[1] == (("sep3", "in0"), ("id", "in0"))
  assert l0007.reduce[0] == (("sep5", "in0"), ("avg", "in0"), ("avg", "in1"),
                             ("max", "in1"), ("id", "in1"), ("sep5", "in1"))
  l0005 = KNOWN_GENOTYPES["bayesnas_l0.005"]
  assert l0005.size_reduct == "factorized"
  assert l0005.reduce[1] == (("max", "n0"), ("avg", "n0"), ("id", "n0"))
  imagenet = KNOWN_GENOTYPES["bayesnas_imagenet"]
  assert imagenet.normal == l001.normal and imagenet.reduce == l001.reduce
  assert imagenet.size_reduct == "conv"


# --- construction -------------------------------------------------------------
def test_constructor_converts_lists_to_tuples_and_is_hashable():
  genotype = Genotype(normal=[[["sep3", "in0"]], [["id", "n0"]]],
                      reduce=[[["max", "in1"]], []])
  assert genotype.normal == ((("sep3", "in0"),), (("id", "n0"),))
  assert isinstance(genotype.reduce[1], tuple)
  assert hash(genotype) == hash(Genotype(normal=genotype.normal,
                                         reduce=genotype.reduce))
  assert genotype.num_nodes == 2


def test_constructor_validates():
  with pytest.raises(GenotypeError, match=r"node n0.*unknown op 'conv7'"):
    Genotype(normal=[[("conv7", "in0")]], reduce=[[("id", "in0")]])
  with pytest.raises(GenotypeError, match=r"size_reduct 'pool'"):
    Genotype(normal=[[("id", "in0")]], reduce=[[("id", "in0")]],
             size_reduct="pool")


def test_empty_nodes_are_allowed_and_reported():
  d = _valid_dict()
  d["normal"]["n1"] = []
  d["reduce"]["n2"] = []
  d["reduce"]["n3"] = []
  genotype = Genotype.from_dict(d)
  assert genotype.degenerate_nodes("normal") == ["n1"]
  assert genotype.degenerate_nodes("reduce") == ["n2", "n3"]
  assert Genotype.from_json(genotype.to_json()) == genotype


def test_cell_accessor():
  genotype = KNOWN_GENOTYPES["bayesnas_l0.01"]
  assert genotype.cell("normal") is genotype.normal
  assert genotype.cell("reduce") is genotype.reduce
  with pytest.raises(ValueError, match="cell_type"):
    genotype.cell("reduction")


def test_search_metadata_is_provenance_only():
  base = KNOWN_GENOTYPES["bayesnas_l0.01"]
  genotype = Genotype(normal=base.normal, reduce=base.reduce,
                      search={"lambda": np.float32(0.5), "seed": np.int64(3),
                              "dataset": "cifar10"})
  assert genotype == base  # search does not take part in equality
  assert genotype.search == {"lambda": 0.5, "seed": 3, "dataset": "cifar10"}
  assert isinstance(genotype.search["seed"], int)
  assert Genotype.from_json(genotype.to_json()).search == genotype.search
  with pytest.raises(GenotypeError, match=r"'search'.*JSON"):
    Genotype(normal=base.normal, reduce=base.reduce, search={"f": object()})


def test_from_dict_defaults_optional_fields():
  d = _valid_dict()
  del d["size_reduct"]
  del d["search"]
  genotype = Genotype.from_dict(d)
  assert genotype.size_reduct == "conv"
  assert genotype.search is None


def test_from_dict_accepts_node_keys_in_any_order():
  d = _valid_dict()
  d["normal"] = dict(reversed(list(d["normal"].items())))
  assert Genotype.from_dict(d) == KNOWN_GENOTYPES["bayesnas_l0.01"]


# --- rejections -----------------------------------------------------------------
def _mutate(fn):
  d = copy.deepcopy(_valid_dict())
  result = fn(d)
  return d if result is None else result


REJECTIONS = [
    ("top_level_list", lambda d: [d], r"must be a JSON object.*received list"),
    ("unknown_field", lambda d: d.update(cells={}, extra=1),
     r"unknown genotype field\(s\) 'cells', 'extra'"),
    ("missing_reduce", lambda d: d.pop("reduce") and None,
     r"missing required field\(s\) reduce"),
    ("missing_version", lambda d: d.pop("schema_version") and None,
     r"missing required field\(s\) schema_version"),
    ("version_string", lambda d: d.update(schema_version="1"),
     r"schema_version must be a positive integer; received '1'"),
    ("version_bool", lambda d: d.update(schema_version=True),
     r"schema_version must be a positive integer; received True"),
    ("version_zero", lambda d: d.update(schema_version=0),
     r"schema_version must be a positive integer; received 0"),
    ("version_newer", lambda d: d.update(schema_version=2),
     r"schema_version 2 was written by a newer bayesnas_tf"),
    ("cell_not_object", lambda d: d.update(normal=[["sep3", "in0"]]),
     r"field 'normal' must be an object"),
    ("cell_no_nodes", lambda d: d.update(reduce={}),
     r"reduce cell has no nodes"),
    ("bad_node_key", lambda d: d["normal"].update(x=[]),
     r"normal cell has unexpected node key\(s\) 'x'"),
    ("skipped_node", lambda d: d["reduce"].update(n5=d["reduce"].pop("n3")),
     r"reduce cell has unexpected node key\(s\) 'n5'; node keys must be "
     r"exactly n0, n1, n2, n3"),
    ("different_node_counts", lambda d: d["reduce"].pop("n3") and None,
     r"normal cell has 4 nodes but the reduce cell has 3"),
    ("node_not_list", lambda d: d["normal"].update(n1="sep3"),
     r"normal cell, node n1 must be a list of \[op, input\] pairs; "
     r"received 'sep3'"),
    ("entry_three_elements", lambda d: d["normal"]["n2"].append(
        ["sep3", "in0", "x"]),
     r"normal cell, node n2, entry 2 must be a 2-element"),
    ("entry_not_strings", lambda d: d["reduce"]["n0"].append(["sep3", 0]),
     r"reduce cell, node n0, entry 5 must be a 2-element.*received \['sep3', 0\]"),
    ("entry_string", lambda d: d["reduce"]["n0"].append("sep3"),
     r"reduce cell, node n0, entry 5 must be a 2-element"),
    ("unknown_op", lambda d: d["normal"]["n3"].append(["conv7x7", "in0"]),
     r"normal cell, node n3, entry 1: unknown op 'conv7x7'; valid ops are "
     + ", ".join(ops.PRIMITIVES)),
    ("unknown_input", lambda d: d["normal"]["n1"].append(["sep3", "in2"]),
     r"normal cell, node n1, entry 2: invalid input 'in2'"),
    ("self_input", lambda d: d["normal"]["n1"].append(["sep3", "n1"]),
     r"node n1, entry 2: invalid input 'n1'.*\(in0, in1, n0\)"),
    ("later_input", lambda d: d["reduce"]["n2"].append(["id", "n3"]),
     r"reduce cell, node n2, entry 2: invalid input 'n3'"),
    ("duplicate_entry", lambda d: d["normal"]["n1"].append(["max", "in0"]),
     r"normal cell, node n1 lists \['max', 'in0'\] twice"),
    ("bad_size_reduct", lambda d: d.update(size_reduct="pool"),
     r"size_reduct 'pool' is invalid; use one of conv, factorized"),
    ("search_not_object", lambda d: d.update(search=[1]),
     r"field 'search' must be an object or null"),
]


@pytest.mark.parametrize("mutate,pattern", [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_from_dict_rejects(mutate, pattern):
  bad = _mutate(mutate)
  with pytest.raises(GenotypeError, match=pattern):
    Genotype.from_dict(bad)
  # The same failure through JSON text and through a file.
  with pytest.raises(GenotypeError, match=pattern):
    Genotype.from_json(json.dumps(bad))


def test_from_json_reports_line_and_column():
  with pytest.raises(GenotypeError, match=r"not valid JSON.*line 3, column 1"):
    Genotype.from_json('{"schema_version": 1,\n "normal": {}\n')


# --- save / load / resolve ---------------------------------------------------------
def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
  path = tmp_path / "sub" / "genotype.json"
  KNOWN_GENOTYPES["bayesnas_l0.005"].save(path)
  KNOWN_GENOTYPES["bayesnas_l0.007"].save(path)  # overwrite
  assert os.listdir(tmp_path / "sub") == ["genotype.json"]
  assert Genotype.load(path) == KNOWN_GENOTYPES["bayesnas_l0.007"]
  assert path.read_text().endswith("}\n")


def test_resolve_by_name():
  for name, genotype in KNOWN_GENOTYPES.items():
    assert resolve_genotype(name) is genotype


def test_resolve_by_file_and_directory(tmp_path):
  genotype = KNOWN_GENOTYPES["bayesnas_l0.005"]
  genotype.save(tmp_path / "genotype.json")
  assert resolve_genotype(str(tmp_path / "genotype.json")) == genotype
  assert resolve_genotype(tmp_path / "genotype.json") == genotype
  assert resolve_genotype(str(tmp_path)) == genotype
  other = tmp_path / "other.json"
  KNOWN_GENOTYPES["bayesnas_l0.01"].save(other)
  assert resolve_genotype(str(other)) == KNOWN_GENOTYPES["bayesnas_l0.01"]


def test_resolve_missing_path(tmp_path):
  missing = str(tmp_path / "nope.json")
  with pytest.raises(GenotypeError,
                     match=r"genotype file .*nope.json does not exist; pass a "
                     r"built-in name \(bayesnas_l0.01, .*bayesnas_imagenet\) "
                     r"or a path to genotype.json"):
    resolve_genotype(missing)
  with pytest.raises(GenotypeError, match=r"does not exist"):
    resolve_genotype("bayesnas_l0.02")
  # A directory without genotype.json names the file it looked for.
  with pytest.raises(GenotypeError,
                     match=r"genotype file .*genotype.json does not exist"):
    resolve_genotype(str(tmp_path))


def test_resolve_invalid_json_file(tmp_path):
  path = tmp_path / "genotype.json"
  path.write_text('{"schema_version": 1,\n  "normal": {"n0": [["sep3", "in0"]],}\n}')
  with pytest.raises(GenotypeError,
                     match=r"genotype file .*genotype.json is not valid JSON "
                     r"\(.* at line 2, column \d+\)"):
    resolve_genotype(str(path))


def test_load_names_the_file_on_schema_errors(tmp_path):
  path = tmp_path / "genotype.json"
  d = _valid_dict()
  d["normal"]["n0"][0][0] = "conv9"
  path.write_text(json.dumps(d))
  with pytest.raises(GenotypeError,
                     match=r"genotype file .*genotype.json: .*unknown op 'conv9'"):
    Genotype.load(path)
