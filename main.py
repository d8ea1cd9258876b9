"""bayesnas_tf command line: `python main.py --mode=search [--flagfile=...]`.

All flags are defined in bayesnas_tf/cli.py and only there (installed, the
same command is the `bayesnas_tf` console script); they become a frozen
`ExperimentConfig` that the library takes (STYLE.md 13-14). A flag left unset
takes the default of the mode's configuration (e.g. the search's SGD lr 0.1).
"""

from bayesnas_tf import cli

if __name__ == "__main__":
  cli.run()
