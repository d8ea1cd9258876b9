"""bayesnas_tf: BayesNAS (Zhou et al., ICML 2019) for TensorFlow 2 / Keras 3."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "bayesnas_tf" / "__init__.py").read_text()).group(1)

setup(
    name="bayesnas_tf",
    version=VERSION,
    description=("BayesNAS: Bayesian one-shot neural architecture search, "
                 "retraining, compression and SavedModel export in TensorFlow"),
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bayesnas_tf", "bayesnas_tf.*"]),
    # `bayesnas_tf --mode=search ...` is `python main.py --mode=search ...`.
    entry_points={"console_scripts": ["bayesnas_tf = bayesnas_tf.cli:run"]},
    install_requires=[
        # TF 2.21 is the version the project is checked on (DESIGN.md 2);
        # Keras 3 comes through `import keras`.
        "tensorflow~=2.21.0",
        "keras>=3.10,<4",
        "tensorflow-datasets~=4.9.7",
        "numpy>=1.26,<3",
        "absl-py>=2.1,<3",
        # tf.summary needs it to write TensorBoard events (TF 2.21 no longer
        # installs it).
        "tensorboard>=2.19,<3",
    ],
    extras_require={
        # The offline quick-start dataset (scikit-learn's bundled digits).
        "embedded": ["scikit-learn>=1.3"],
        # PNG/SVG cell pictures (also needs the `dot` program).
        "viz": ["graphviz>=0.20"],
        # graphviz: the cell-picture tests run through the Python package
        # (with a stand-in `dot` where Graphviz itself is not installed).
        # pytest-xdist: the suite runs its files on two workers (-n 2): most
        # of its time is single-threaded tracing and process start-up.
        "test": ["pytest>=8", "pytest-xdist>=3", "scikit-learn>=1.3",
                 "graphviz>=0.20"],
    },
)
