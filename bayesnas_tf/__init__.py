"""bayesnas_tf: BayesNAS (Zhou et al., ICML 2019) in TensorFlow 2 / Keras 3.

The Python API (bayesnas_tf/api.py) runs every mode of main.py:

    from bayesnas_tf import api
    found = api.search(dataset="digits", model_dir="runs/nb_search")

also re-exported here as `run_search`, `run_retrain`, `run_transfer`,
`run_compress`, `run_export` and `make_config`. Importing the package stays
light: TensorFlow is imported when a mode runs (or a submodule that needs
it is imported), not by `import bayesnas_tf`.

The subpackages, lowest first (a lower one never imports a higher one; each
`__init__` says what lives there): nn, layers, spaces (the search-space
families and their registry), config, runtime, data, search, compress and
training, modes; at the top api.py and cli.py (the command line). The root
also holds errors.py, io_utils.py and testing.py (for the tests).
"""

__version__ = "0.1.0"

# Public name -> the function of bayesnas_tf.api it stands for.
_API = {"run_search": "search", "run_retrain": "retrain",
        "run_transfer": "transfer", "run_compress": "compress",
        "run_export": "export", "make_config": "make_config"}

__all__ = ["api", "__version__", *_API]


def __getattr__(name):
  # PEP 562: the API module is imported on first use, not with the package.
  import importlib  # pylint: disable=import-outside-toplevel
  if name == "api":
    return importlib.import_module("bayesnas_tf.api")
  if name in _API:
    return getattr(importlib.import_module("bayesnas_tf.api"), _API[name])
  raise AttributeError(f"module 'bayesnas_tf' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
