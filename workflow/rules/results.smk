# From run directories to the summary, the tables and the figures.


rule aggregate:
    input:
        [f"{run_dir(*key)}/metrics.json" for key in MATRIX],
    output:
        summary=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Tables"),
        by_config=report(f"{RESULTS}/summary_by_config.csv", caption="../report/summary_by_config.rst", category="Tables"),
    log:
        "logs/aggregate.log",
    shell:
        "pamm-bench aggregate --runs {RUNS} --out {output.summary} --by-config {output.by_config} 2>&1 | tee {log}"


rule figures:
    input:
        f"{RESULTS}/summary.csv",
    output:
        metrics=report(f"{RESULTS}/figures/metrics_by_model.png", caption="../report/metrics_by_model.rst", category="Figures"),
        curves=report(f"{RESULTS}/figures/training_curves.png", caption="../report/training_curves.rst", category="Figures"),
    log:
        "logs/figures.log",
    shell:
        "pamm-bench figures --summary {input} --runs {RUNS} --out-dir {RESULTS}/figures > {log} 2>&1"
