# Train and evaluate one run of the matrix. Torch threads follow the rule's `threads`.


rule train:
    input:
        dataset_ready,
    output:
        f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/checkpoint.pt",
    params:
        root=lambda wc: dataset_root(wc.dataset),
        out=lambda wc: run_dir(wc.dataset, wc.model, wc.variant, wc.seed),
        profile=config["profile"],
        overrides=OVERRIDE_ARGS,
    threads: THREADS
    resources:
        mem_mb=4000,
    log:
        "logs/train/{dataset}/{model}/{variant}/seed{seed}.log",
    shell:
        "pamm-bench train --profile {params.profile} --dataset {wildcards.dataset} --model {wildcards.model}"
        " --variant {wildcards.variant} --seed {wildcards.seed} --data-root {params.root} --out {params.out}"
        " --threads {threads} --no-progress {params.overrides} > {log} 2>&1"


rule evaluate:
    input:
        f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/checkpoint.pt",
    output:
        f"{RUNS}/{{dataset}}/{{model}}/{{variant}}/seed{{seed}}/metrics.json",
    params:
        run=lambda wc: run_dir(wc.dataset, wc.model, wc.variant, wc.seed),
    threads: THREADS
    log:
        "logs/evaluate/{dataset}/{model}/{variant}/seed{seed}.log",
    shell:
        "pamm-bench evaluate --run {params.run} --threads {threads} --no-progress > {log} 2>&1"
