# Config validation and the run matrix. No model code is imported here.
# Every path reaches the shell through {...:q} (or shlex.quote), so roots with spaces or non-ASCII work.
import json
import os
import shlex
import sys

from pamm.data.synthetic import GENERATOR_VERSION as SYNTHETIC_GENERATOR_VERSION
from pamm.config import REPO_ROOT, ConfigError, resolve_workflow_runs, validate_workflow_config, workflow_matrix

configfile: "workflow/config.yaml"


def stop(err):
    """End the DAG build with one line (Snakemake would print a traceback or a dump of the config)."""
    print(f"pamm-bench workflow: error: {err}", file=sys.stderr)
    sys.exit(1)


try:
    validate_workflow_config(config, REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as err:
    stop(err)

# The software of every rule: the conda environment of the README's GPU install, into which the README then
# installs this package; run Snakemake inside that environment (`--use-conda` would build it without pamm-bench).
SOFTWARE = str(REPO_ROOT / "environment.yml")
RESULTS = config["results_dir"]
RUNS = f"{RESULTS}/runs"
THREADS = int(config.get("threads_per_job", 1))
# Extra --set overrides for every run, as one JSON string per top-level key.
OVERRIDE_ARGS = " ".join(
    f"--set {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in (config.get("overrides") or {}).items()
)


# Local pretrained weights per backbone name: every run whose backbone matches gets its file.
OVERRIDE_ARGS += "".join(f" --pretrained {shlex.quote(f'{name}={path}')}"
                         for name, path in (config.get("pretrained") or {}).items())


# (dataset, model, variant, seed) of every run: the dataset's own `models` matrix when it has one, else the
# top-level one; single-task variants only for the dataset's own tasks.
MATRIX = workflow_matrix(config)

# Resolve every run's config now, as its train job will: an unknown model or variant, or a bad `overrides`
# key, stops here with one line instead of failing inside every train job later. Each run's config hash is
# its train job's param, so an edited model YAML or overlay reruns that run (Snakemake's params trigger).
try:
    CONFIG_HASHES = resolve_workflow_runs(config, MATRIX)
except ConfigError as err:
    stop(err)


def config_hash_of(wildcards):
    return CONFIG_HASHES[(wildcards.dataset, wildcards.model, wildcards.variant, int(wildcards.seed))]


def run_dir(dataset, model, variant, seed):
    return f"{RUNS}/{dataset}/{model}/{variant}/seed{seed}"


def dataset_root(dataset):
    """Synthetic data always lives in data/synthetic/<dataset>; a real dataset where `root` says."""
    if config["datasets"][dataset]["synthetic"] is not None:
        return f"data/synthetic/{dataset}"
    return config["datasets"][dataset]["root"]


def runs_root(run_file):
    """The runs folder (RUNS) of a file in a run directory RUNS/<dataset>/<model>/<variant>/seed<N>/."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(run_file)))))


def synthetic_inputs(wildcards):
    """The generator's marker file of a synthetic dataset (nothing for a real one)."""
    if config["datasets"][wildcards.dataset]["synthetic"] is None:
        return []
    return f"{dataset_root(wildcards.dataset)}/pamm_synthetic.json"


def dataset_runs(wildcards, name="metrics.json"):
    """File ``name`` of every run of the matrix on the wildcard's dataset."""
    return [f"{run_dir(*key)}/{name}" for key in MATRIX if key[0] == wildcards.dataset]


def dataset_ready(wildcards):
    """What must exist before training on a dataset: its check report."""
    return f"{RESULTS}/checks/{wildcards.dataset}.json"


ALL_TARGETS = [
    f"{RESULTS}/summary.csv",
    f"{RESULTS}/summary_by_config.csv",
    f"{RESULTS}/figures/metrics_by_model.png",
    f"{RESULTS}/figures/training_curves.png",
]
