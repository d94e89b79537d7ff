"""The ``promptbias`` command line: one subcommand per pipeline stage.

    promptbias [--params FILE ...] [--set KEY=VALUE ...] [--debug] COMMAND [ARGS]

``--params`` files are deep-merged left to right, ``--set`` overrides single keys (``--set
train.epochs=2``), and the result is validated against ``workflow/schemas/params.schema.yaml`` before
any command runs. Without ``--params`` the layering is the one ``dvc.yaml`` was generated for (its
top-level ``params:`` list, e.g. ``params.yaml`` + ``config/demo.yaml``), else ``params.yaml``: that is
how the bare commands of dvc.yaml find their config.

Subcommands are imported lazily from the module that owns them (``_COMMANDS``), so ``promptbias
--help`` and light stages start without importing torch. Each command takes the resolved
configuration through ``click.pass_obj`` (a :class:`promptbias.config.RunContext`).

User errors (:class:`promptbias.errors.UserError`) print one line and exit with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import sys

import click

from promptbias.errors import UserError

# command name -> "module:attribute" of a click.Command
_COMMANDS: dict[str, str] = {
    "fetch": "promptbias.data.commands:fetch",
    "split": "promptbias.data.commands:split",
    "cache": "promptbias.data.commands:cache",
    "pretrain-demo": "promptbias.demo.pretrain:pretrain_demo",
    "train": "promptbias.train:train_command",
    "evaluate": "promptbias.evaluate:evaluate_command",
    "aggregate": "promptbias.aggregate:aggregate_command",
    "probe": "promptbias.probes.commands:probe",
    "render": "promptbias.render.commands:render",
    "dvc-yaml": "promptbias.pipeline.dvc:dvc_yaml_command",
    "run": "promptbias.runner:run_command",
    "gpu-slot": "promptbias.devices:gpu_slot_command",
    "warm": "promptbias.warm:warm_command",
    "validate": "promptbias.config:validate_command",
}


# one-line help shown by `promptbias --help` without importing the command modules (torch takes seconds);
# tests/test_perf_exactness.py checks it against each command's own docstring
_SHORT_HELP: dict[str, str] = {
    "aggregate": "Mean ± std and 95% CI over seeds; OPTIMAL prompt configuration (validation-selected).",
    "cache": "Decode + test-transform the test and val images of DATASET once into data/cache/<ds>/.",
    "dvc-yaml": "Write dvc.yaml from the stage spec for the params files given with --params.",
    "evaluate": "Top-1 (micro), macro and per-class accuracy on the full test split.",
    "fetch": "Download (or link with --from) DATASET, verify it, and write its normalised split.",
    "gpu-slot": "Run COMMAND with one free GPU (CUDA_VISIBLE_DEVICES set; the lock lives as long as COMMAND).",
    "warm": "Run COMMAND with a warm server: the promptbias jobs it starts skip the torch import.",
    "pretrain-demo": "Pretrain the demo CLIP on the demo world's caption corpus (CPU, a few minutes).",
    "probe": "Run one analysis probe and write probes/<dataset>/<method>/seed<S>/<kind>.parquet (+ .json).",
    "render": "Draw Table 1, the figures and plots, and the HTML report.",
    "run": "Run the stale part of the DAG: DVC decides, Snakemake runs (N GPU jobs at a time), DVC commits.",
    "split": "Write the K-shot subset of DATASET for one seed (CoOp/Dassl-compatible).",
    "train": "Train one method on one dataset and seed (resumes from its checkpoint).",
    "validate": "Validate the params files and print the resolved configuration.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from ``_SHORT_HELP``: ``--help`` imports no command module."""
        names = [n for n in self.list_commands(ctx) if n in _SHORT_HELP]
        if not names:
            return super().format_commands(ctx, formatter)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, click.utils.make_default_short_help(_SHORT_HELP[n], limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a stage whose module is not built yet
            if exc.name and exc.name.startswith("promptbias"):
                return None
            raise
        return getattr(module, attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--params",
    "params_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Params YAML; repeat to layer files (later wins). Default: dvc.yaml's layering, else params.yaml.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one params key.")
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors.")
@click.version_option(package_name="promptbias")
@click.pass_context
def cli(ctx: click.Context, params_files: tuple[str, ...], overrides: tuple[str, ...], debug: bool) -> None:
    """Train, evaluate and explain multi-modal prompts and bias tuning on CLIP."""
    from promptbias.config import RunContext
    from promptbias.pipeline.dvc import layering

    files = params_files or layering() or ("params.yaml",)
    ctx.obj = RunContext(params_files=files, overrides=overrides, debug=debug)


_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from promptbias.warm import delegate

    delegate(argv)  # with a warm server (PROMPTBIAS_WARM): run there and exit; else run here
    debug = "--debug" in argv
    try:
        _run(argv)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a folder the user cannot write: one line, like every user error
        if debug or exc.errno not in _NOT_WRITABLE:
            raise
        where = exc.filename or "an output file"
        click.echo(
            f"error: {where}: {exc.strerror} — make it writable (owner, permissions, a read-only mount) "
            "or run in a folder you can write",
            err=True,
        )
        sys.exit(UserError.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def _run(argv: list[str]) -> None:
    """The command; the job locks it took (promptbias.joblock) are released when it ends."""
    from promptbias.joblock import release_all

    try:
        cli.main(args=argv, prog_name="promptbias", standalone_mode=False)
    finally:
        release_all()


if __name__ == "__main__":
    main()
