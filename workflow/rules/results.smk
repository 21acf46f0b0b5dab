# From run directories to the summary, the tables and the figures.
# Every table / figure is the output of a rule whose inputs are the files it reads, so it is redrawn
# when they change; `report(...)` outputs (with an .rst caption each) make `snakemake --report`.
from pamm.config import REPO_ROOT, model_config_paths, variant_parts, variant_path

REPO_DIR = REPO_ROOT  # the checkout (published numbers, overlays, configs), also when run with -d elsewhere
PUBLISHED = str(REPO_DIR / "results" / "reference" / "published.csv")
# Every model YAML: its display section names, colours, orders and marks the model in tables and figures.
MODEL_YAMLS = [str(path) for path in model_config_paths()]
TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"
SWEEP_CSV = f"{RESULTS}/efficiency/resolution_sweep.csv"
DATASETS = list(config["datasets"])
PAMM_VARIANTS = list(config["models"].get("pamm", []))
HAS_ABLATIONS = "default" in PAMM_VARIANTS and len(PAMM_VARIANTS) > 1
# Efficiency against resolution (random weights, no runs needed). `resolution_sweep: {models: []}` in the
# workflow config switches it off (the config schema must list the key).
SWEEP = {"models": ["pamm", "mtmamba", "invpt"], "sizes": [64, 96, 128], "repeats": 3, "dataset": DATASETS[0],
         **(config.get("resolution_sweep") or {})}
HAS_SWEEP = bool(SWEEP["models"]) and bool(SWEEP["sizes"])


RESULTS_TARGETS = (
    [f"{TABLES}/{kind}_{dataset}.{ext}" for dataset in DATASETS for kind in ("main", "ablation") for ext in ("md", "tex")]
    + [f"{FIGURES}/{name}_{dataset}.{ext}" for dataset in DATASETS for name in ("pareto", "qualitative")
       for ext in ("png", "pdf")]
    + ([f"{FIGURES}/ablation_{dataset}.{ext}" for dataset in DATASETS for ext in ("png", "pdf")] if HAS_ABLATIONS else [])
    + [f"{FIGURES}/scan_orders.{ext}" for ext in ("png", "pdf")]
    + ([SWEEP_CSV] + [f"{FIGURES}/resolution_sweep.{ext}" for ext in ("png", "pdf")] if HAS_SWEEP else [])
)


rule aggregate:
    input:
        [f"{run_dir(*key)}/{name}" for key in MATRIX
         for name in ("config.yaml", "provenance.json", "metrics.json", "profile.json")],
    output:
        summary=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Tables", subcategory="Summaries"),
        by_config=report(f"{RESULTS}/summary_by_config.csv", caption="../report/summary_by_config.rst", category="Tables",
                         subcategory="Summaries"),
    params:
        runs=lambda wc, input: runs_root(input[0]),
    conda:
        SOFTWARE
    log:
        "logs/aggregate.log",
    shell:
        "pamm-bench aggregate --runs {params.runs:q} --out {output.summary:q} --by-config {output.by_config:q} 2>&1 | tee {log:q}"


rule tables:
    input:
        summary=f"{RESULTS}/summary.csv",
        by_config=f"{RESULTS}/summary_by_config.csv",
        published=PUBLISHED,
        overlays=sorted({str(variant_path(part)) for v in PAMM_VARIANTS if v != "default" for part in variant_parts(v)}),
        display=MODEL_YAMLS,
    output:
        main=report(f"{TABLES}/main_{{dataset}}.md", caption="../report/main_table.rst", category="Tables",
                    subcategory="{dataset}", labels={"dataset": "{dataset}", "table": "main results"}),
        main_tex=f"{TABLES}/main_{{dataset}}.tex",
        ablation=report(f"{TABLES}/ablation_{{dataset}}.md", caption="../report/ablation_table.rst", category="Tables",
                        subcategory="{dataset}", labels={"dataset": "{dataset}", "table": "PAMM ablations"}),
        ablation_tex=f"{TABLES}/ablation_{{dataset}}.tex",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        SOFTWARE
    log:
        "logs/tables/{dataset}.log",
    shell:
        "pamm-bench tables --summary {input.summary:q} --by-config {input.by_config:q} --published {input.published:q}"
        " --out-dir {params.out_dir:q} --datasets {wildcards.dataset:q} > {log:q} 2>&1"


rule figures:
    input:
        summary=f"{RESULTS}/summary.csv",
        logs=[f"{run_dir(*key)}/train_log.csv" for key in MATRIX],
        display=MODEL_YAMLS,
    output:
        metrics=report(f"{FIGURES}/metrics_by_model.png", caption="../report/metrics_by_model.rst", category="Figures",
                       subcategory="Accuracy"),
        metrics_pdf=f"{FIGURES}/metrics_by_model.pdf",
        curves=report(f"{FIGURES}/training_curves.png", caption="../report/training_curves.rst", category="Figures",
                      subcategory="Training"),
        curves_pdf=f"{FIGURES}/training_curves.pdf",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        runs=lambda wc, input: runs_root(input.logs[0]),
    conda:
        SOFTWARE
    log:
        "logs/figures/summary.log",
    shell:
        "pamm-bench figures --summary {input.summary:q} --runs {params.runs:q} --out-dir {params.out_dir:q}"
        " --only metrics_by_model training_curves > {log:q} 2>&1"


rule figure_pareto:
    input:
        summary=f"{RESULTS}/summary.csv",
        by_config=f"{RESULTS}/summary_by_config.csv",
        published=PUBLISHED,
        display=MODEL_YAMLS,
    output:
        png=report(f"{FIGURES}/pareto_{{dataset}}.png", caption="../report/pareto.rst", category="Figures",
                   subcategory="Accuracy vs cost", labels={"dataset": "{dataset}", "figure": "accuracy vs cost"}),
        pdf=f"{FIGURES}/pareto_{{dataset}}.pdf",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        SOFTWARE
    log:
        "logs/figures/pareto_{dataset}.log",
    shell:
        "pamm-bench figures --summary {input.summary:q} --by-config {input.by_config:q} --published {input.published:q}"
        " --out-dir {params.out_dir:q} --only pareto --datasets {wildcards.dataset:q} > {log:q} 2>&1"


rule figure_ablation:
    input:
        summary=f"{RESULTS}/summary.csv",
        by_config=f"{RESULTS}/summary_by_config.csv",
    output:
        png=report(f"{FIGURES}/ablation_{{dataset}}.png", caption="../report/ablation.rst", category="Figures",
                   subcategory="Ablations", labels={"dataset": "{dataset}", "figure": "PAMM ablations"}),
        pdf=f"{FIGURES}/ablation_{{dataset}}.pdf",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        SOFTWARE
    log:
        "logs/figures/ablation_{dataset}.log",
    shell:
        "pamm-bench figures --summary {input.summary:q} --by-config {input.by_config:q} --out-dir {params.out_dir:q}"
        " --only ablation --datasets {wildcards.dataset:q} > {log:q} 2>&1"


rule figure_qualitative:
    input:
        summary=f"{RESULTS}/summary.csv",
        examples=lambda wc: dataset_runs(wc, "examples.pt"),
        display=MODEL_YAMLS,
    output:
        png=report(f"{FIGURES}/qualitative_{{dataset}}.png", caption="../report/qualitative.rst", category="Figures",
                   subcategory="Qualitative", labels={"dataset": "{dataset}", "figure": "val predictions"}),
        pdf=f"{FIGURES}/qualitative_{{dataset}}.pdf",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        runs=lambda wc, input: runs_root(input.examples[0]),
    conda:
        SOFTWARE
    log:
        "logs/figures/qualitative_{dataset}.log",
    shell:
        "pamm-bench figures --summary {input.summary:q} --runs {params.runs:q} --out-dir {params.out_dir:q}"
        " --only qualitative --datasets {wildcards.dataset:q} > {log:q} 2>&1"


rule figure_scan_orders:
    input:
        str(REPO_DIR / "pamm" / "ops" / "scan_orders.py"),
    output:
        png=report(f"{FIGURES}/scan_orders.png", caption="../report/scan_orders.rst", category="Figures",
                   subcategory="Scan orders"),
        pdf=f"{FIGURES}/scan_orders.pdf",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        SOFTWARE
    log:
        "logs/figures/scan_orders.log",
    shell:
        "pamm-bench figures --out-dir {params.out_dir:q} --only scan_orders > {log:q} 2>&1"


rule resolution_sweep:
    input:
        [str(REPO_DIR / "pamm" / "configs" / "base.yaml")]
        + [str(REPO_DIR / "pamm" / "configs" / "models" / f"{m}.yaml") for m in SWEEP["models"]],
    output:
        report(SWEEP_CSV, caption="../report/resolution_sweep_csv.rst", category="Tables", subcategory="Efficiency"),
    params:
        models=" ".join(shlex.quote(m) for m in SWEEP["models"]),
        sizes=" ".join(str(s) for s in SWEEP["sizes"]),
        repeats=SWEEP["repeats"],
        dataset=SWEEP["dataset"],
        scale=config["scale"],
    threads: THREADS
    conda:
        SOFTWARE
    log:
        "logs/resolution_sweep.log",
    shell:
        "pamm-bench sweep --models {params.models} --sizes {params.sizes} --dataset {params.dataset:q}"
        " --scale {params.scale:q} --repeats {params.repeats} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"


rule figure_resolution_sweep:
    input:
        sweep=SWEEP_CSV,
        display=MODEL_YAMLS,
    output:
        png=report(f"{FIGURES}/resolution_sweep.png", caption="../report/resolution_sweep.rst", category="Figures",
                   subcategory="Efficiency"),
        pdf=f"{FIGURES}/resolution_sweep.pdf",
    params:
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        SOFTWARE
    log:
        "logs/figures/resolution_sweep.log",
    shell:
        "pamm-bench figures --sweep {input.sweep:q} --out-dir {params.out_dir:q} --only resolution_sweep > {log:q} 2>&1"
