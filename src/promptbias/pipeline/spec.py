"""The stage spec: every stage once — its command, outputs, matrix, dependencies and params keys.

    STAGES                          # fetch, split, cache, pretrain-demo, train, evaluate, aggregate, probe, render
    STAGE_BY_NAME["train"].outs(cfg)        # [Out("runs/{dataset}/{method}/seed{seed}/params.safetensors"), …]
    STAGE_BY_NAME["train"].params(cfg, w)   # the params keys the command reads for wildcards ``w``

A :class:`Stage` names its ``promptbias`` command (the arguments after the global options), its
outputs (path templates over the matrix wildcards ``dataset``/``method``/``seed``, from
:mod:`promptbias.paths`), the matrix taken from params lists, its dependencies, the params keys its
command reads, and whether it needs a GPU. :mod:`promptbias.pipeline.plan` expands the spec into jobs.

Protocols (params ``protocols``, :mod:`promptbias.protocols`) add rows to the same matrices: with
``base2novel`` every dataset gains the class views ``<ds>-base`` (trained, evaluated, probed) and
``<ds>-novel`` (evaluated and probed with the base view's tensors); with ``cross_dataset`` every other
sweep dataset gains ``<ds>-from_<source>`` (evaluated with the source's few-shot tensors), and each
ImageNet variant of ``cross_dataset.domain_targets`` (source ``imagenet``) is fetched, cached and
evaluated as ``<variant>-from_imagenet`` (zero-shot and the source's tensors; no split, no training). The
same commands run them; the few-shot jobs and their params stay exactly as without the protocols.

Params keys are exactly what the command reads (a test holds every command to them): editing any
other key reruns nothing. Performance-only keys (``data.num_workers``) are not params of any stage.
Code changes are not dependencies (force a stage: ``dvc repro -f -s <stage>`` /
``snakemake --forcerun <rule>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbias import catalog, paths, protocols
from promptbias.config import grid_method_ids, method_kind, method_trains
from promptbias.data.registry import is_test_only
from promptbias.errors import UserError

Config = dict[str, Any]
Wildcards = dict[str, str]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# the train section keys that decide a training run (eval_batch_size is evaluate's)
TRAIN_KEYS = tuple(
    f"train.{k}"
    for k in ("epochs", "batch_size", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "crop_scale")
)


@dataclass(frozen=True)
class Out:
    """One output path template. ``metric`` / ``plot``: a DVC metric / plot; ``cache``: in the DVC cache."""

    path: str
    metric: bool = False
    plot: bool = False
    cache: bool = True
    directory: bool = False
    report: str | None = None  # Snakemake report category (figures, report)
    patterns: tuple[str, ...] = ()  # report(): file patterns inside a directory output


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: one ``promptbias`` command over a matrix of wildcard values."""

    name: str
    wildcards: tuple[str, ...]
    command: Callable[[Config, Wildcards], str]  # the arguments after the global options
    outs: Callable[[Config], list[Out]]  # templates over ``wildcards`` (config-dependent, not per job)
    matrix: Callable[[Config], list[Wildcards]]
    deps: Callable[[Config, Wildcards], list[str]]
    params: Callable[[Config, Wildcards], list[str]]
    gpu: bool = False
    log: str = ""
    records: Callable[[Config], list[str]] = lambda cfg: []  # outputs whose JSON states the job's "params"

    @property
    def rule_name(self) -> str:
        return self.name.replace("-", "_")


def _p(path: Path) -> str:
    return path.as_posix()


# --------------------------------------------------------------------------------------- inputs
def data_root(cfg: Config) -> str:
    return str(cfg["data"]["root"]).rstrip("/")


def demo_clip_dir(cfg: Config) -> str:
    return str(cfg["demo"]["clip_dir"]).rstrip("/")


def weights_deps(cfg: Config) -> list[str]:
    """The backbone weights file when it is a file (the pretrain-demo output or a local checkpoint)."""
    pretrained = cfg["model"]["pretrained"]
    if not pretrained:
        return []
    if pretrained.endswith(WEIGHT_SUFFIXES) or "/" in pretrained or Path(pretrained).is_file():
        return [pretrained]
    return []  # an open_clip tag such as "openai": downloaded, not tracked


# ------------------------------------------------------------------------------------- the matrix
def all_datasets(cfg: Config) -> list[str]:
    """sweep.datasets, then any sensitivity dataset not in it (order kept, no repeats)."""
    out = list(cfg["sweep"]["datasets"])
    if cfg["sensitivity"]["enabled"]:
        out += [d for d in cfg["sensitivity"]["datasets"] if d not in out]
    return out


def fetched_datasets(cfg: Config) -> list[str]:
    """Every dataset whose files are fetched and cached: :func:`all_datasets`, then the test-only domain
    targets of the cross-dataset protocol (not split: they are never trained on)."""
    out = all_datasets(cfg)
    return out + [d for d in protocols.domain_targets(cfg) if d not in out]


def methods_for(cfg: Config, ds: str) -> list[str]:
    """The method ids evaluated on ``ds``: sweep.methods, plus the grid on sensitivity datasets."""
    out = list(cfg["sweep"]["methods"]) if ds in cfg["sweep"]["datasets"] else []
    if ds in cfg["sensitivity"]["datasets"]:
        out += [m for m in grid_method_ids(cfg) if m not in out]
    return out


def seeds(cfg: Config) -> list[str]:
    return [str(s) for s in cfg["sweep"]["seeds"]]


def class_views(cfg: Config, datasets: list[str]) -> list[tuple[str, str]]:
    """(view id, dataset) of the base-to-novel class views of ``datasets`` when that protocol is on."""
    if not protocols.enabled(cfg, protocols.BASE2NOVEL):
        return []
    return [(protocols.view_id(d, v), d) for d in datasets for v in protocols.VIEWS]


def transfer_views(cfg: Config) -> list[tuple[str, str]]:
    """(view id, source) of the cross-dataset views when that protocol is on: every other sweep dataset
    evaluated with the source's few-shot tensors."""
    if not protocols.enabled(cfg, protocols.CROSS_DATASET):
        return []
    source = cfg["cross_dataset"]["source"]
    return [(protocols.transfer_id(d, source), source) for d in cfg["sweep"]["datasets"] if d != source]


def domain_views(cfg: Config) -> list[tuple[str, str]]:
    """(view id, source) of the domain-generalisation views: each test-only variant of the source
    (``cross_dataset.domain_targets``) evaluated with the source's few-shot tensors."""
    targets = protocols.domain_targets(cfg)  # none unless the protocol is on: then the source is read
    source = cfg["cross_dataset"]["source"] if targets else None
    return [(protocols.transfer_id(d, source), source) for d in targets]


def protocol_keys(cfg: Config) -> list[str]:
    """``protocols`` (and ``cross_dataset`` with that protocol): aggregate and render read them for the
    views (``protocols`` also when it selects the few-shot sweep only: they read it to know that)."""
    return ["protocols", *(["cross_dataset"] if protocols.enabled(cfg, protocols.CROSS_DATASET) else [])]


def sensitivity_keys(cfg: Config) -> list[str]:
    """The sensitivity keys aggregate and render read: the grid (``depths``, ``n_ctx``) only when it is on."""
    if cfg["sensitivity"]["enabled"]:
        return ["sensitivity"]
    return ["sensitivity.enabled", "sensitivity.datasets"]


def evaluate_matrix(cfg: Config) -> list[Wildcards]:
    """The few-shot sweep, then each base-to-novel class view with its dataset's methods, then each
    cross-dataset view with the source's trained methods (zero-shot on a target is its sweep run), then
    each domain-generalisation view with all the source's methods (a variant has no sweep run), × seeds."""
    plain = all_datasets(cfg)
    rows = [(d, d) for d in plain] + class_views(cfg, plain)
    out = [
        {"dataset": d, "method": m, "seed": s}
        for d, of in rows
        for m in methods_for(cfg, of)
        for s in seeds(cfg)
    ]
    out += [
        {"dataset": d, "method": m, "seed": s}
        for d, source in transfer_views(cfg)
        for m in methods_for(cfg, source)
        if method_trains(m)
        for s in seeds(cfg)
    ]
    return out + [
        {"dataset": d, "method": m, "seed": s}
        for d, source in domain_views(cfg)
        for m in methods_for(cfg, source)
        for s in seeds(cfg)
    ]


def method_pairs(cfg: Config) -> list[tuple[str, str]]:
    """Every evaluated dataset × method once: aggregate writes one metrics file for each."""
    return list(dict.fromkeys((w["dataset"], w["method"]) for w in evaluate_matrix(cfg)))


def _trained(w: Wildcards) -> bool:
    """A run with a training job of its own (a novel view evaluates its base view's tensors)."""
    return method_trains(w["method"]) and protocols.train_source(w["dataset"]) == w["dataset"]


def train_matrix(cfg: Config) -> list[Wildcards]:
    """The evaluated runs that train, then probed runs that are trained for the probes only (Figs. 2-3)."""
    out = [w for w in evaluate_matrix(cfg) if _trained(w)]
    return out + [w for w in probe_matrix(cfg) if _trained(w) and w not in out]


def probed_methods(cfg: Config) -> list[str]:
    """probes.methods, then the prompt model of Figs. 2-3 when the relevancy probe runs.

    That model (``probes.relevancy_prompt``) need not be evaluated: the train stage trains it for the
    probe seeds where no evaluated run does (:func:`train_matrix`).
    """
    out = list(cfg["probes"]["methods"])
    if "relevancy" in cfg["probes"]["kinds"]:
        figure = catalog.relevancy_prompt_method(cfg)
        out += [figure] if figure not in out else []
    return out


def probe_matrix(cfg: Config) -> list[Wildcards]:
    probes = cfg["probes"]
    if not probes["kinds"]:
        return []
    known_seeds = seeds(cfg)
    out = []
    plain = list(cfg["sweep"]["datasets"])
    for ds, of in [(d, d) for d in plain] + class_views(cfg, plain):  # views: novel-class inputs too
        known = methods_for(cfg, of)
        for m in probed_methods(cfg):
            if m not in known and m in probes["methods"]:
                raise UserError(
                    f"probes.methods: {m!r} is not evaluated on {ds} — add it to sweep.methods "
                    "(grid ids need sensitivity.enabled and the dataset in sensitivity.datasets)"
                )
            for s in probes["seeds"]:
                if str(s) not in known_seeds:
                    raise UserError(
                        f"probes.seeds: seed {s} is not in sweep.seeds {known_seeds} — add it there or drop it"
                    )
                out.append({"dataset": ds, "method": m, "seed": str(s)})
    return out


# ------------------------------------------------------------------------------------ params keys
def method_keys(method: str) -> list[str]:
    return [f"methods.{method_kind(method)}"]


def model_keys() -> list[str]:
    """What decides a forward pass of the frozen CLIP on this machine (threads: float reduction order)."""
    return ["model", "device", "cpu_threads"]


def probe_kind_keys(cfg: Config, method: str) -> list[str]:
    """The probes.* keys the job's kinds read for ``method`` (each catalog entry names its own, and those
    it reads for a zero-shot run only), in a stable order."""
    keys: list[str] = []
    zeroshot = method_kind(method) == "zeroshot"
    for kind in cfg["probes"]["kinds"]:
        info = catalog.probe_info(kind)
        read = (*info.common, *info.params, *(info.zeroshot_params if zeroshot else ()))
        keys += [k for k in read if k not in keys]
    return keys


def fetch_keys(dataset: str) -> list[str]:
    keys = ["data.root", "data.source_root"]
    return keys + (["demo.world_seed"] if dataset.startswith("demo_") else [])


def pretrain_keys(cfg: Config) -> list[str]:
    return [f"demo.{k}" for k in cfg["demo"] if k != "enabled"]


def train_keys(method: str) -> list[str]:
    return [*model_keys(), "data.root", "data.shots", *TRAIN_KEYS, *method_keys(method)]


def evaluate_keys(method: str) -> list[str]:
    return [
        *model_keys(),
        "data.root",
        "data.shots",
        "data.cache_images",
        "train.eval_batch_size",
        *method_keys(method),
    ]


def probe_keys(cfg: Config, method: str) -> list[str]:
    return [
        *model_keys(),
        "data.root",
        "data.cache_images",
        *method_keys(method),
        *probe_kind_keys(cfg, method),
    ]


# ------------------------------------------------------------------------------------------- deps
def _evaluate_deps(cfg: Config, w: Wildcards) -> list[str]:
    root, ds, method, seed = data_root(cfg), w["dataset"], w["method"], w["seed"]
    shots, data = cfg["data"]["shots"], protocols.data_of(ds)  # a class view reads its dataset's files
    deps = [_p(paths.raw_json(root, data))]
    if not is_test_only(data):  # a test-only variant has no val: no few-shot split
        deps.append(_p(paths.split_json(root, data, shots, seed)))  # val accuracy
    if cfg["data"]["cache_images"]:
        deps.append(_p(paths.cache_dir(root, data)))
    if method_trains(method):  # zero-shot depends on no train stage
        source = protocols.train_source(ds)
        src = protocols.data_of(source)
        if src != data:  # a transfer: the source's split files are checked too
            deps += [_p(paths.raw_json(root, src)), _p(paths.split_json(root, src, shots, seed))]
        deps.append(_p(paths.run_file(source, method, seed, paths.PARAMS)))
    return deps + weights_deps(cfg)


def _probe_deps(cfg: Config, w: Wildcards) -> list[str]:
    root, ds, method, seed = data_root(cfg), w["dataset"], w["method"], w["seed"]
    data = protocols.data_of(ds)
    deps = [_p(paths.raw_json(root, data))]
    if cfg["data"]["cache_images"]:
        deps.append(_p(paths.cache_dir(root, data)))
    if method_trains(method):
        deps.append(_p(paths.run_file(protocols.train_source(ds), method, seed, paths.PARAMS)))
    return deps + weights_deps(cfg)


def _probe_outs(cfg: Config) -> list[Out]:
    outs = []
    for kind in cfg["probes"]["kinds"]:
        for suffix in ("parquet", "json"):
            outs.append(Out(_p(paths.probe_file("{dataset}", "{method}", "{seed}", kind, suffix))))
        if catalog.probe_info(kind).writes_arrays:
            outs.append(Out(_p(paths.probe_file("{dataset}", "{method}", "{seed}", kind, "npz"))))
    return outs


def probe_files(cfg: Config) -> list[str]:
    templates = [o.path for o in _probe_outs(cfg)]
    return [t.format(**w) for w in probe_matrix(cfg) for t in templates]


def rendered_tables(cfg: Config) -> list[Path]:
    """The tables ``promptbias render`` writes besides the figures: what each renderer declares."""
    from promptbias.render.catalog import (
        expected_outputs,  # (matplotlib: only when the render stage is planned)
    )

    return [p for p in expected_outputs(cfg) if p.parent == paths.TABLES]


def _render_deps(cfg: Config, w: Wildcards) -> list[str]:
    return [
        _p(paths.SUMMARY_JSON),
        _p(paths.SUMMARY_CSV),
        *(
            _p(paths.metrics_json(v["dataset"], v["method"], v["seed"])) for v in evaluate_matrix(cfg)
        ),  # AVERAGE std
        *(
            _p(paths.raw_json(data_root(cfg), d)) for d in cfg["sweep"]["datasets"]
        ),  # Fig. 6 draws probed images
        *probe_files(cfg),
    ]


_RUN = ("{dataset}", "{method}", "{seed}")

STAGES: tuple[Stage, ...] = (
    Stage(
        name="fetch",
        wildcards=("dataset",),
        command=lambda cfg, w: f"fetch {w['dataset']}",
        outs=lambda cfg: [Out(_p(paths.raw_json(data_root(cfg), "{dataset}")), cache=False)],
        matrix=lambda cfg: [{"dataset": d} for d in fetched_datasets(cfg)],
        deps=lambda cfg, w: [],
        params=lambda cfg, w: fetch_keys(w["dataset"]),
        log=_p(paths.log_file("fetch", "{dataset}")),
    ),
    Stage(
        name="split",
        wildcards=("dataset", "seed"),
        command=lambda cfg, w: f"split {w['dataset']} --shots {cfg['data']['shots']} --seed {w['seed']}",
        outs=lambda cfg: [
            Out(_p(paths.split_json(data_root(cfg), "{dataset}", cfg["data"]["shots"], "{seed}")))
        ],
        matrix=lambda cfg: [{"dataset": d, "seed": s} for d in all_datasets(cfg) for s in seeds(cfg)],
        deps=lambda cfg, w: [_p(paths.raw_json(data_root(cfg), w["dataset"]))],
        params=lambda cfg, w: ["data.root", "data.shots"],
        log=_p(paths.log_file("split", "{dataset}_seed{seed}")),
    ),
    Stage(
        name="cache",
        wildcards=("dataset",),
        command=lambda cfg, w: f"cache {w['dataset']}",
        outs=lambda cfg: [Out(_p(paths.cache_dir(data_root(cfg), "{dataset}")), cache=False, directory=True)],
        matrix=lambda cfg: (
            [{"dataset": d} for d in fetched_datasets(cfg)] if cfg["data"]["cache_images"] else []
        ),
        deps=lambda cfg, w: [_p(paths.raw_json(data_root(cfg), w["dataset"]))],
        params=lambda cfg, w: ["data.root", "model.name"],
        log=_p(paths.log_file("cache", "{dataset}")),
    ),
    Stage(
        name="pretrain-demo",
        wildcards=(),
        command=lambda cfg, w: "pretrain-demo",
        outs=lambda cfg: [
            Out(_p(paths.demo_weights(demo_clip_dir(cfg)))),
            Out(_p(paths.demo_record(demo_clip_dir(cfg)))),
        ],
        matrix=lambda cfg: [{}] if cfg["demo"]["enabled"] else [],
        deps=lambda cfg, w: [],
        params=lambda cfg, w: ["device", *pretrain_keys(cfg)],
        gpu=True,
        log=_p(paths.log_file("pretrain_demo")),
        records=lambda cfg: [_p(paths.demo_record(demo_clip_dir(cfg)))],
    ),
    Stage(
        name="train",
        wildcards=("dataset", "method", "seed"),
        command=lambda cfg, w: f"train --dataset {w['dataset']} --method {w['method']} --seed {w['seed']}",
        outs=lambda cfg: [
            Out(_p(paths.run_file(*_RUN, paths.PARAMS))),
            Out(_p(paths.run_file(*_RUN, paths.TRAIN_RECORD))),
            Out(_p(paths.run_file(*_RUN, paths.CURVE)), plot=True),  # cached: plots diff reads old revisions
        ],
        matrix=train_matrix,
        deps=lambda cfg, w: [
            _p(paths.raw_json(data_root(cfg), protocols.data_of(w["dataset"]))),
            _p(
                paths.split_json(
                    data_root(cfg), protocols.data_of(w["dataset"]), cfg["data"]["shots"], w["seed"]
                )
            ),
            *weights_deps(cfg),
        ],
        params=lambda cfg, w: train_keys(w["method"]),
        gpu=True,
        log=_p(paths.log_file("train", "{dataset}", "{method}", "seed{seed}")),
        records=lambda cfg: [_p(paths.run_file(*_RUN, paths.TRAIN_RECORD))],
    ),
    Stage(
        name="evaluate",
        wildcards=("dataset", "method", "seed"),
        command=lambda cfg, w: f"evaluate --dataset {w['dataset']} --method {w['method']} --seed {w['seed']}",
        outs=lambda cfg: [
            Out(_p(paths.metrics_json(*_RUN)), cache=False),  # in git; the metric is aggregate's summary
            Out(_p(paths.per_class_json(*_RUN)), cache=False),
        ],
        matrix=evaluate_matrix,
        deps=_evaluate_deps,
        params=lambda cfg, w: evaluate_keys(w["method"]),
        gpu=True,
        log=_p(paths.log_file("evaluate", "{dataset}", "{method}", "seed{seed}")),
        records=lambda cfg: [_p(paths.per_class_json(*_RUN))],
    ),
    Stage(
        name="aggregate",
        wildcards=(),
        command=lambda cfg, w: "aggregate",
        outs=lambda cfg: [
            *(
                Out(_p(paths.method_metrics_json(d, m)), metric=True, cache=False)
                for d, m in method_pairs(cfg)
            ),
            Out(_p(paths.SUMMARY_JSON), cache=False),
            Out(_p(paths.SUMMARY_CSV)),
        ],
        matrix=lambda cfg: [{}],
        deps=lambda cfg, w: [
            _p(paths.metrics_json(v["dataset"], v["method"], v["seed"])) for v in evaluate_matrix(cfg)
        ],
        params=lambda cfg, w: [
            "sweep.datasets",
            "sweep.methods",
            "sweep.seeds",
            *sensitivity_keys(cfg),
            *protocol_keys(cfg),
        ],
        log=_p(paths.log_file("aggregate")),
    ),
    Stage(
        name="probe",
        wildcards=("dataset", "method", "seed"),
        command=lambda cfg, w: (  # all kinds in one process: one start-up per job
            f"probe {' '.join(cfg['probes']['kinds'])} --dataset {w['dataset']} --method {w['method']} --seed {w['seed']}"
        ),
        outs=_probe_outs,
        matrix=probe_matrix,
        deps=_probe_deps,
        params=lambda cfg, w: probe_keys(cfg, w["method"]),
        gpu=True,
        log=_p(paths.log_file("probe", "{dataset}", "{method}", "seed{seed}")),
        records=lambda cfg: [_p(paths.probe_file(*_RUN, kind, "json")) for kind in cfg["probes"]["kinds"]],
    ),
    Stage(
        name="render",
        wildcards=(),
        command=lambda cfg, w: "render",
        outs=lambda cfg: [
            Out(_p(paths.FIGURES), directory=True, report="Figures", patterns=("{name}.png",)),
            *(Out(_p(path)) for path in rendered_tables(cfg)),
            Out(_p(paths.REPORT), report="Report"),
        ],
        matrix=lambda cfg: [{}],
        deps=_render_deps,
        params=lambda cfg, w: [
            "render",
            "model.name",  # the report names the backbone
            "model.pretrained",
            "sweep.datasets",
            "sweep.methods",
            "sweep.seeds",  # Table 1's std over seeds
            "probes.kinds",
            "probes.methods",
            "probes.seeds",
            "probes.rotations",  # the rotation finding
            "probes.relevancy_prompt",
            "probes.relevancy_template",  # Fig. 2's caption names the zero-shot captions
            "methods.prompt.depth_text",  # probes.relevancy_prompt.depth: null
            *sensitivity_keys(cfg),
            *protocol_keys(cfg),
        ],
        log=_p(paths.log_file("render")),
    ),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}
STAGE_BY_RULE = {s.rule_name: s for s in STAGES}


def check_consistency(cfg: Config) -> None:
    """Cross-key rules the schema cannot express (raised before any job is planned)."""
    for key, datasets in (
        ("sweep.datasets", cfg["sweep"]["datasets"]),
        ("sensitivity.datasets", cfg["sensitivity"]["datasets"]),
    ):
        for d in datasets:
            if is_test_only(d):
                raise UserError(
                    f"{key}: {d!r} is a test-only ImageNet variant (no train images) — remove it there and list "
                    "it in cross_dataset.domain_targets (evaluated with ImageNet's tensors, protocols: cross_dataset)"
                )
    source = cfg.get("cross_dataset", {}).get("source")
    if protocols.enabled(cfg, protocols.CROSS_DATASET) and source not in cfg["sweep"]["datasets"]:
        raise UserError(
            f"cross_dataset.source: {source!r} is not in sweep.datasets — add it there (its few-shot runs are "
            "the tensors transferred) or choose one of them"
        )
    if protocols.FEWSHOT not in cfg.get("protocols", [protocols.FEWSHOT]):
        raise UserError(
            f"protocols: {cfg['protocols']} lacks fewshot — keep it first (Table 1, the probes and the "
            "report are the few-shot sweep's); add base2novel / cross_dataset beside it"
        )
    if cfg["demo"]["enabled"]:
        weights = _p(paths.demo_weights(demo_clip_dir(cfg)))
        if cfg["model"]["pretrained"] != weights:
            raise UserError(
                f"model.pretrained: {cfg['model']['pretrained']!r} is not the pretrain-demo output — "
                f"set it to {weights!r} (demo.clip_dir + {paths.DEMO_WEIGHTS}) or set demo.enabled: false"
            )
    probe_matrix(cfg)  # probes.methods / probes.seeds must name evaluated runs
