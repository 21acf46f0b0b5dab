# pamm-bench: `snakemake --cores 8 all` runs the whole matrix of workflow/config.yaml.
# Thin on purpose: every rule lives in workflow/rules/*.smk and is one `pamm-bench <verb>` call.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/results.smk"


rule all:
    input:
        ALL_TARGETS + RESULTS_TARGETS,
    default_target: True
