# Synthetic data (when the dataset's `synthetic` is set) and the dataset check.


rule make_synthetic:
    output:
        "data/synthetic/{dataset}/pamm_synthetic.json",
    params:
        opts=lambda wc: config["datasets"][wc.dataset]["synthetic"],
        generator=SYNTHETIC_GENERATOR_VERSION,  # a new renderer version re-renders (Snakemake's params trigger)
    conda:
        SOFTWARE
    log:
        "logs/make_synthetic/{dataset}.log",
    shell:
        "pamm-bench make-synthetic --dataset {wildcards.dataset:q} --out data/synthetic/{wildcards.dataset:q}"
        " --n-train {params.opts[n_train]} --n-val {params.opts[n_val]} --height {params.opts[height]}"
        " --width {params.opts[width]} --seed {params.opts[seed]} --no-progress > {log:q} 2>&1"


rule check_dataset:
    input:
        synthetic_inputs,
    output:
        f"{RESULTS}/checks/{{dataset}}.json",
    params:
        root=lambda wc: dataset_root(wc.dataset),
    conda:
        SOFTWARE
    log:
        "logs/check_dataset/{dataset}.log",
    shell:
        "pamm-bench check-dataset {params.root:q} --dataset {wildcards.dataset:q} --report {output:q} --no-progress"
        " > {log:q} 2>&1"
