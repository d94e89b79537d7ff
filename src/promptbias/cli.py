"""The ``promptbias`` command line: one subcommand per pipeline stage.

    promptbias [--params FILE ...] [--set KEY=VALUE ...] [--debug] COMMAND [ARGS]

``--params`` files are deep-merged left to right (default: ``params.yaml``; the demo adds
``config/demo.yaml``), ``--set`` overrides single keys (``--set train.epochs=2``), and the result is
validated against ``workflow/schemas/params.schema.yaml`` before any command runs.

Subcommands are imported lazily from the module that owns them (``_COMMANDS``), so ``promptbias
--help`` and light stages start without importing torch. Each command takes the resolved
configuration through ``click.pass_obj`` (a :class:`promptbias.config.RunContext`).

User errors (:class:`promptbias.errors.UserError`) print one line and exit with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import click

from promptbias.errors import UserError

# command name -> "module:attribute" of a click.Command
_COMMANDS: dict[str, str] = {
    "fetch": "promptbias.data.commands:fetch",
    "split": "promptbias.data.commands:split",
    "cache": "promptbias.data.commands:cache",
    "pretrain-demo": "promptbias.pretrain_demo:pretrain_demo",
    "train": "promptbias.train:train_command",
    "evaluate": "promptbias.evaluate:evaluate_command",
    "aggregate": "promptbias.aggregate:aggregate_command",
    "probe": "promptbias.probes.commands:probe",
    "render": "promptbias.render.commands:render",
    "dvc-yaml": "promptbias.pipeline:dvc_yaml_command",
    "run": "promptbias.runner:run_command",
    "gpu-slot": "promptbias.devices:gpu_slot_command",
    "validate": "promptbias.config:validate_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

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
    help="Params YAML; repeat to layer files (later wins). Default: params.yaml.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one params key.")
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors.")
@click.version_option(package_name="promptbias")
@click.pass_context
def cli(ctx: click.Context, params_files: tuple[str, ...], overrides: tuple[str, ...], debug: bool) -> None:
    """Train, evaluate and explain multi-modal prompts and bias tuning on CLIP."""
    from promptbias.config import RunContext

    ctx.obj = RunContext(params_files=params_files or ("params.yaml",), overrides=overrides, debug=debug)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="promptbias", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
