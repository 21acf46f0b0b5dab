# Config validation and the run matrix. No model code is imported here.
import json
import os

from snakemake.utils import validate

from pamm.data.synthetic import GENERATOR_VERSION as SYNTHETIC_GENERATOR_VERSION
from pamm.config import variant_parts
from pamm.tasks import DATASET_TASKS

configfile: "workflow/config.yaml"


validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results_dir"]
RUNS = f"{RESULTS}/runs"
THREADS = int(config.get("threads_per_job", 1))
# Extra --set overrides for every run, as one JSON string per top-level key.
OVERRIDE_ARGS = " ".join(
    f"--set '{key}={json.dumps(value)}'" for key, value in (config.get("overrides") or {}).items()
)


# Local pretrained weights per backbone name: every run whose backbone matches gets its file.
OVERRIDE_ARGS += "".join(f" --pretrained '{name}={path}'" for name, path in (config.get("pretrained") or {}).items())


def variant_applies(dataset, model, variant):
    """Single-task variants exist only for the dataset's own tasks (stl_<task>, or composed: stl_<task>+swin)."""
    if model == "stl":
        return variant_parts(variant)[0].removeprefix("stl_") in DATASET_TASKS[dataset]
    return True


def dataset_models(dataset):
    """The dataset's own matrix when it has one, else the top-level `models`."""
    return config["datasets"][dataset].get("models") or config["models"]


MATRIX = [
    (dataset, model, variant, seed)
    for dataset in config["datasets"]
    for model, variants in dataset_models(dataset).items()
    for variant in variants
    if variant_applies(dataset, model, variant)
    for seed in config["seeds"]
]


def run_dir(dataset, model, variant, seed):
    return f"{RUNS}/{dataset}/{model}/{variant}/seed{seed}"


def dataset_root(dataset):
    """Synthetic data always lives in data/synthetic/<dataset>; a real dataset where `root` says."""
    if config["datasets"][dataset]["synthetic"] is not None:
        return f"data/synthetic/{dataset}"
    return config["datasets"][dataset]["root"]


def dataset_ready(wildcards):
    """What must exist before training on a dataset: its check report."""
    return f"{RESULTS}/checks/{wildcards.dataset}.json"


ALL_TARGETS = [
    f"{RESULTS}/summary.csv",
    f"{RESULTS}/summary_by_config.csv",
    f"{RESULTS}/figures/metrics_by_model.png",
    f"{RESULTS}/figures/training_curves.png",
]
