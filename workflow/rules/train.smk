# Train and evaluate one run of the matrix. Torch threads follow the rule's `threads`.
# GPU jobs are switched by config (`gpus_per_run`), not by --resources: Snakemake does not hold back a
# `gpu=1` job on a machine without GPUs. With more than one GPU per run, training goes through torchrun (DDP).
GPUS = int(config.get("gpus_per_run", 0))
EVAL_GPUS = min(GPUS, 1)  # evaluate and profile run on one GPU (none when gpus_per_run is 0)
TRAIN_LAUNCH = f"torchrun --standalone --nproc_per_node={GPUS} -m pamm.cli" if GPUS > 1 else "pamm-bench"


rule train:
    input:
        dataset_ready,
    # last.pt (the resume state, read and written) is deliberately no output: Snakemake deletes a failed or
    # incomplete job's outputs, and a cut run must resume from it. A changed config hash (the param) reruns
    # the job, and --on-config-change restart sets the old config's last.pt aside instead of stopping on it.
    output:
        checkpoint=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/checkpoint.pt",
        config=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/config.yaml",
        log=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/train_log.csv",
        provenance=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/provenance.json",
    params:
        config_hash=config_hash_of,  # the resolved config's hash: a new one reruns the run (params trigger)
        root=lambda wc: dataset_root(wc.dataset),
        out=lambda wc: run_dir(wc.dataset, wc.model, wc.variant, wc.seed),
        scale=config["scale"],
        overrides=OVERRIDE_ARGS,
        launch=TRAIN_LAUNCH,
    threads: THREADS
    resources:
        mem_mb=4000,
        gpu=GPUS,
    conda:
        SOFTWARE
    log:
        "logs/train/{dataset}/{model}/{variant}/seed{seed}.log",
    shell:
        "{params.launch} train --scale {params.scale:q} --dataset {wildcards.dataset:q} --model {wildcards.model:q}"
        " --variant {wildcards.variant:q} --seed {wildcards.seed:q} --data-root {params.root:q} --out {params.out:q}"
        " --threads {threads} --no-progress --on-config-change restart {params.overrides} > {log:q} 2>&1"


rule evaluate:
    input:
        checkpoint=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/checkpoint.pt",
        config=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/config.yaml",
        dataset=dataset_ready,
    output:
        metrics=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/metrics.json",
        examples=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/examples.pt",
    params:
        run=lambda wc: run_dir(wc.dataset, wc.model, wc.variant, wc.seed),
    threads: THREADS
    resources:
        gpu=EVAL_GPUS,
    conda:
        SOFTWARE
    log:
        "logs/evaluate/{dataset}/{model}/{variant}/seed{seed}.log",
    shell:
        "pamm-bench evaluate --run {params.run:q} --threads {threads} --no-progress > {log:q} 2>&1"


rule profile:
    input:
        checkpoint=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/checkpoint.pt",
        config=f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/config.yaml",
    output:
        f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/profile.json",
    params:
        run=lambda wc: run_dir(wc.dataset, wc.model, wc.variant, wc.seed),
        repeats=config.get("profile_repeats", 5),
    threads: THREADS
    resources:
        gpu=EVAL_GPUS,
    conda:
        SOFTWARE
    log:
        "logs/profile/{dataset}/{model}/{variant}/seed{seed}.log",
    shell:
        "pamm-bench profile --run {params.run:q} --repeats {params.repeats} --threads {threads} > {log:q} 2>&1"
