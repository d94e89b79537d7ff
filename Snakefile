"""promptbias — the Snakemake entry point (thin: the stages live in src/promptbias/pipeline/spec.py).

    snakemake --cores all --resources gpu=4                                         # the paper, 4 GPU jobs at a time
    snakemake --cores all --configfile config/demo.yaml --resources gpu=0 report_html   # the offline demo (make demo)
    snakemake --profile workflow/profiles/slurm                                     # on a SLURM cluster

Config: ``params.yaml`` (``configfile:``), then any ``--configfile`` files, then ``--config`` values —
the same layering as ``promptbias --params params.yaml --params <file> ...``. Every job runs
``promptbias --params params.yaml [--params <configfile> ...] [--set <--config value> ...] <command>``,
so a command sees exactly the config Snakemake planned with. The config is checked with the package's
one-line messages first, then with Snakemake's ``validate`` against the same schema.
"""

import sys

from snakemake.utils import validate

from promptbias.errors import UserError
from promptbias.pipeline.snakemake import pipeline_from_snakemake


configfile: "params.yaml"


try:
    PIPE = pipeline_from_snakemake(workflow, config)
except UserError as exc:
    sys.exit(f"error: {exc}")

validate(config, "workflow/schemas/params.schema.yaml", set_default=False)


# Targets: `all` (default) = every output of every job; `report_html` = results/report.html and what it
# needs (make demo); `metrics` = the Table 1 sweep and its aggregate, no probes or figures. A named target
# asks for *every* output of its job (render, aggregate), not one file: after a protocol is switched on, its
# new tables are then missing outputs, so the job reruns (Snakemake's params trigger stays silent for a job
# that has outputs without metadata, and an unrequested missing output is no reason to run).
rule all:
    input:
        [path for job in PIPE.jobs() for path in job.out_paths],


rule report_html:
    input:
        PIPE.job("render", {}).out_paths,


rule metrics:
    input:
        PIPE.job("aggregate", {}).out_paths,


# A warm process for local jobs: they skip importing torch (promptbias.warm; PROMPTBIAS_WARM=off: cold).
onstart:
    from promptbias import warm

    warm.start_for_snakemake(workflow)


onsuccess:
    from promptbias import warm

    warm.stop_for_snakemake()


onerror:
    from promptbias import warm

    warm.stop_for_snakemake()


include: "workflow/rules/stages.smk"
