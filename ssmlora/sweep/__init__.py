"""The length sweep: a grid of (method, length, seed) cells, each trained and scored by `ssmlora.lab.cell` in its
own process. `config` holds the configuration tree, `validate` every check that needs no training, `launch` the
cell processes, `runner` the orchestration and `cli` the command line (`experiments/run.py`, `ssmlora-sweep`)."""
