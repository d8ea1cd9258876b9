"""Tests for bayesnas_tf.visualize: DOT text and the optional PNG rendering."""

from __future__ import annotations

import builtins
import logging
import os
import re
import sys
import types

import pytest

from bayesnas_tf.spaces import pictures
from bayesnas_tf.spaces.dag import visualize
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES


def _edge_lines(dot):
  return [line.strip() for line in dot.splitlines() if "->" in line]


def test_dot_of_released_normal_cell():
  genotype = KNOWN_GENOTYPES["bayesnas_l0.01"]
  dot = visualize.genotype_to_dot(genotype, "normal")
  assert dot.startswith("digraph normal {")
  assert dot.rstrip().endswith("}")
  assert dot.count("{") == dot.count("}")
  assert 'in0 [label="c_{k-1}"' in dot
  assert 'in1 [label="c_{k-2}"' in dot
  expected = [
      'in0 -> n0 [label="sep5"];', 'in1 -> n0 [label="sep5"];',
      'in1 -> n0 [label="max"];', 'in1 -> n0 [label="avg"];',
      'in1 -> n0 [label="id"];', 'in0 -> n1 [label="max"];',
      'in0 -> n1 [label="id"];', 'in0 -> n2 [label="id"];',
      'in1 -> n2 [label="max"];', 'n0 -> n3 [label="avg"];',
      "n0 -> out;", "n1 -> out;", "n2 -> out;", "n3 -> out;",
  ]
  edges = _edge_lines(dot)
  assert sorted(edges) == sorted(expected)
  assert len(set(edges)) == len(edges)  # each edge line once
  assert "dashed" not in dot


@pytest.mark.parametrize("name", sorted(KNOWN_GENOTYPES))
def test_dot_has_one_line_per_op_and_input(name):
  genotype = KNOWN_GENOTYPES[name]
  for cell_type in ("normal", "reduce"):
    dot = visualize.genotype_to_dot(genotype, cell_type)
    edges = _edge_lines(dot)
    ops = [e for e in edges if "label=" in e]
    assert len(ops) == sum(len(n) for n in genotype.cell(cell_type))
    assert len([e for e in edges if e.endswith("-> out;")]) == genotype.num_nodes
    assert len(set(edges)) == len(edges)
    for line in ops:
      assert re.fullmatch(r'(in0|in1|n\d) -> n\d \[label="[a-z0-9]+"\];', line)


def test_empty_nodes_are_dashed():
  genotype = Genotype(normal=[[("sep3", "in0")], [], [("id", "n1")]],
                      reduce=[[("max", "in1")], [("id", "n0")], []])
  dot = visualize.genotype_to_dot(genotype, "normal")
  node_lines = {line.split()[0]: line for line in dot.splitlines()[1:]
                if re.match(r"\s+n\d \[", line)}
  assert "dashed" in node_lines["n1"]
  assert "dashed" not in node_lines["n0"] and "dashed" not in node_lines["n2"]
  assert "n1 -> out;" in dot  # still concatenated (zeros)
  reduce_dot = visualize.genotype_to_dot(genotype, "reduce")
  assert re.search(r"n2 \[.*dashed", reduce_dot)


def test_write_dot_only_when_dot_program_missing(tmp_path, monkeypatch, caplog):
  # The graphviz Python package is an optional extra; a stand-in module makes
  # this test exercise the missing-`dot` branch whether or not it is installed.
  monkeypatch.setitem(sys.modules, "graphviz", types.ModuleType("graphviz"))
  monkeypatch.setattr(pictures.shutil, "which", lambda name: None)
  genotype = KNOWN_GENOTYPES["bayesnas_l0.007"]
  out_dir = tmp_path / "cells"
  with caplog.at_level(logging.INFO, logger="absl"):
    paths = visualize.write_cell_pictures(genotype, out_dir)
  assert paths == [str(out_dir / "normal.dot"), str(out_dir / "reduce.dot")]
  assert sorted(os.listdir(out_dir)) == ["normal.dot", "reduce.dot"]
  assert (out_dir / "normal.dot").read_text() == visualize.genotype_to_dot(
      genotype, "normal")
  assert (out_dir / "reduce.dot").read_text() == visualize.genotype_to_dot(
      genotype, "reduce")
  skipped = [r.getMessage() for r in caplog.records
             if r.name == "absl" and "PNG" in r.getMessage()]
  assert len(skipped) == 1
  assert "`dot` program is not on PATH" in skipped[0]


def test_write_dot_only_when_graphviz_package_missing(tmp_path, monkeypatch,
                                                      caplog):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "graphviz":
      raise ImportError("no graphviz")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  monkeypatch.setattr(pictures.shutil, "which", lambda name: "/usr/bin/dot")
  with caplog.at_level(logging.INFO, logger="absl"):
    paths = visualize.write_cell_pictures(KNOWN_GENOTYPES["bayesnas_l0.01"],
                                          tmp_path)
  assert [os.path.basename(p) for p in paths] == ["normal.dot", "reduce.dot"]
  skipped = [r.getMessage() for r in caplog.records
             if r.name == "absl" and "PNG" in r.getMessage()]
  assert len(skipped) == 1 and "graphviz Python package" in skipped[0]


def test_write_pngs_when_graphviz_available(tmp_path, monkeypatch):
  graphviz = pytest.importorskip("graphviz")
  rendered = []

  def fake_pipe(self, format=None, **kwargs):  # pylint: disable=redefined-builtin
    rendered.append((self.source, format))
    return b"\x89PNG fake"

  monkeypatch.setattr(pictures.shutil, "which", lambda name: "/usr/bin/dot")
  monkeypatch.setattr(graphviz.Source, "pipe", fake_pipe)
  genotype = KNOWN_GENOTYPES["bayesnas_l0.005"]
  paths = visualize.write_cell_pictures(genotype, tmp_path)
  assert [os.path.basename(p) for p in paths] == [
      "normal.dot", "reduce.dot", "normal.png", "reduce.png"]
  assert (tmp_path / "normal.png").read_bytes() == b"\x89PNG fake"
  assert rendered == [(visualize.genotype_to_dot(genotype, "normal"), "png"),
                      (visualize.genotype_to_dot(genotype, "reduce"), "png")]


def test_render_failure_keeps_dot_files(tmp_path, monkeypatch, caplog):
  graphviz = pytest.importorskip("graphviz")

  def failing_pipe(self, format=None, **kwargs):  # pylint: disable=redefined-builtin
    raise RuntimeError("dot crashed")

  monkeypatch.setattr(pictures.shutil, "which", lambda name: "/usr/bin/dot")
  monkeypatch.setattr(graphviz.Source, "pipe", failing_pipe)
  with caplog.at_level(logging.WARNING, logger="absl"):
    paths = visualize.write_cell_pictures(KNOWN_GENOTYPES["bayesnas_l0.01"],
                                          tmp_path)
  assert [os.path.basename(p) for p in paths] == ["normal.dot", "reduce.dot"]
  assert any("dot crashed" in r.getMessage() for r in caplog.records)
