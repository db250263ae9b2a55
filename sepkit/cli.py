"""``sepkit`` command line: the built-in commands train | separate | evaluate | score | compare | profile,
and commands that other packages add as plugins (``sepkit prepare`` from data_prep).

A plugin is a callable ``main(argv: list[str]) -> int`` registered in an installed
distribution's metadata under the entry-point group ``sepkit.commands``, e.g. in
pyproject.toml::

    [project.entry-points."sepkit.commands"]
    prepare = "data_prep.cli:main"

This keeps the dependency one way: data_prep imports sepkit, and sepkit finds
``prepare`` in packaging metadata without naming data_prep anywhere in its code. The
first line of the plugin's docstring is its summary in ``sepkit --help``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

PLUGIN_GROUP = "sepkit.commands"

BUILTIN_COMMANDS = {
    "train": "train a model from a LightningCLI YAML recipe (sepkit train --config recipes/...yaml)",
    "separate": "separate wav/flac files or folders with a checkpoint",
    "evaluate": "separation metrics of a checkpoint on a test table or folder: per-utterance CSV, summary with CIs",
    "score": "the same metrics and reports for separated files written by any toolkit",
    "compare": "paired comparison of two evaluations: mean difference, bootstrap CI, fraction improved",
    "profile": "parameters, MACs, peak memory, forward latency and real-time factor of a model",
    "export": "export a checkpoint to ONNX (OUT.onnx) or a torch.export archive (OUT.pt2)",
}


class CommandError(Exception):
    """A plugin command that is ambiguous or cannot be loaded; the message is one line."""


def plugin_entry_points() -> dict[str, list[EntryPoint]]:
    """Installed ``sepkit.commands`` entry points by command name, distinct targets only.

    A name with more than one target is kept with all of them so that running it can say
    which plugins clash; names of built-in commands are left out, a plugin cannot replace one.
    """
    found: dict[str, list[EntryPoint]] = {}
    # Every metadata record on sys.path, not entry_points(group=...): that keeps only the
    # first record per distribution name, so a stale sepkit.egg-info left in a source
    # checkout by an older install would hide the installed record whenever the checkout
    # is on sys.path (python -m pytest, python -m sepkit.cli run from its root).
    for distribution in distributions():
        for entry_point in distribution.entry_points.select(group=PLUGIN_GROUP):
            if entry_point.name in BUILTIN_COMMANDS:
                continue
            targets = found.setdefault(entry_point.name, [])
            # The same distribution seen twice (an editable install and its source tree)
            # lists the same target twice: that is not a clash.
            if all(known.value != entry_point.value for known in targets):
                targets.append(entry_point)
    return found


def load_plugin(name: str, targets: list[EntryPoint]) -> Callable[[list[str]], int]:
    """Import the plugin command ``name``; raises CommandError with a one-line reason."""
    if len(targets) > 1:
        raise CommandError(
            f"command {name!r} is registered by more than one plugin in entry-point group {PLUGIN_GROUP!r}: "
            + ", ".join(target.value for target in targets)
        )
    target = targets[0]
    try:
        command = target.load()
    except Exception as err:  # any failure inside the plugin's import is reported, not raised
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise CommandError(f"command {name!r} could not be loaded from {target.value}: {reason}") from err
    if not callable(command):
        raise CommandError(f"command {name!r}: {target.value} is a {type(command).__name__}, not a callable main(argv)")
    return command


def usage() -> str:
    """The ``sepkit --help`` text: built-in commands, then each installed plugin with its summary."""
    lines = [f"  {name:<10} {summary}" for name, summary in BUILTIN_COMMANDS.items()]
    for name, targets in sorted(plugin_entry_points().items()):
        try:
            doc = (load_plugin(name, targets).__doc__ or "").strip()
            # Docstrings are sentences; the command list is lower-case fragments.
            summary = doc.splitlines()[0].rstrip(".") if doc else f"(plugin {targets[0].value})"
            summary = summary[:1].lower() + summary[1:]
        except CommandError as err:
            summary = f"unavailable: {err}"
        lines.append(f"  {name:<10} {summary}")
    return (
        "usage: sepkit <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nRun `sepkit <command> --help` for the options of a command."
    )


def config_file_problem(argv: list[str]) -> str | None:
    """One line naming the first ``--config``/``-c`` file in ``argv`` that is empty, not
    YAML, or not a mapping, else ``None``. LightningCLI answers those with its whole usage
    text and an error that names no file ("Unexpected config")."""
    import yaml

    for flag, value in zip(argv, argv[1:] + [""]):
        if flag.startswith("--config="):
            value = flag.partition("=")[2]
        elif flag not in ("-c", "--config"):
            continue
        path = Path(value)
        if not path.is_file():  # inline YAML, or a missing file that jsonargparse names itself
            continue
        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            return f"{path}: not a valid YAML file ({where}{getattr(err, 'problem', None) or err})"
        if config is None:
            return f"{path}: config file is empty (expected a YAML mapping with trainer:, model: and data: blocks)"
        if not isinstance(config, dict):
            return f"{path}: config file holds a {type(config).__name__}, expected a YAML mapping (trainer:, model:, data:)"
    return None


def train_main(argv: list[str]) -> int:
    problem = config_file_problem(argv)
    if problem is not None:
        print(f"sepkit train: error: {problem}", file=sys.stderr)
        return 2

    from sepkit.allocator import keep_freed_memory

    keep_freed_memory()  # before any tensor: each step reuses its pages instead of faulting them in

    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, RichProgressBar
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sepkit.callbacks import (
        PlainProgress,
        RunCheckpoint,
        RunConfigSaver,
        RunFolderError,
        StepBudgetRichProgressBar,
        claim_checkpoint_folder,
        default_run_name,
        run_loggers,
        time_cap_problem,
    )
    from sepkit.data.datamodule import SeparationDataModule
    from sepkit.preemption import SIGTERM_EXIT_STATUS
    from sepkit.training import NonFiniteError, SeparationModule, ValidationExamplesLogger, model_data_settings

    class SepkitParser(LightningArgumentParser):
        def dump(self, cfg, *args, **kwargs) -> str:
            # Printed (--print_config, dumped before jsonargparse applies links) and saved
            # configs show the data block's sample rate and n_src as taken from the model;
            # a config carrying them still parses (the link sets them again).
            cfg = cfg.clone()
            if cfg.get("model") is not None and cfg.get("data") is not None:
                cfg["data.sample_rate"], cfg["data.n_src"] = model_data_settings(
                    cfg["model.model_name"], cfg["model.model_config"]
                )
            kwargs["skip_link_targets"] = False
            return super().dump(cfg, *args, **kwargs)

    class SepkitCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # Configurable from YAML as `checkpoint:` and `early_stopping:` blocks.
            parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val/loss",
                    "checkpoint.mode": "min",
                    "checkpoint.save_last": True,
                    "checkpoint.save_top_k": 1,
                    "checkpoint.filename": "best",
                    "checkpoint.auto_insert_metric_name": False,
                }
            )
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            # Checked after validation only: a run stopped by max_steps mid-epoch has no
            # fresh val/loss at the end of its last (partial) epoch.
            parser.set_defaults(
                {
                    "early_stopping.monitor": "val/loss",
                    "early_stopping.mode": "min",
                    "early_stopping.patience": 30,
                    "early_stopping.check_on_train_epoch_end": False,
                }
            )
            # The model block is the one place a recipe states the sample rate and the number
            # of sources; the data block receives them. jsonargparse refuses a
            # --data.sample_rate / --data.n_src flag and replaces such keys in a config file
            # (printed and saved configs carry them, so those parse again).
            parser.link_arguments(
                ("model.model_name", "model.model_config"),
                "data.sample_rate",
                compute_fn=lambda name, config: model_data_settings(name, config)[0],
            )
            parser.link_arguments(
                ("model.model_name", "model.model_config"),
                "data.n_src",
                compute_fn=lambda name, config: model_data_settings(name, config)[1],
            )
            # Audio and spectrograms of the first validation mixtures in TensorBoard, as a
            # `validation_examples:` block (n_examples: 0 turns it off).
            parser.add_lightning_class_args(ValidationExamplesLogger, "validation_examples")
            parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint")
            parser.add_argument(
                "--test_after_fit", type=bool, default=True, help="evaluate the best checkpoint on the test split"
            )
            parser.add_argument(
                "--name",
                type=str | None,
                default=None,
                help="run folder <trainer.default_root_dir>/<name> (default: <recipe folder>_<recipe file stem>)",
            )
            parser.add_argument(
                "--restart",
                type=bool,
                default=False,
                help="start afresh in a run folder that holds an earlier run (deletes its checkpoints and logs)",
            )

        def before_instantiate_classes(self) -> None:
            # One folder per run. A folder that already holds checkpoints is refused unless
            # the run resumes (--ckpt_path last) or --restart says to start afresh: never a
            # best-v1.ckpt beside an earlier run's best.ckpt.
            config = self.config
            config.name = config.name or default_run_name(config.get("config") or [])
            if config.name in (".", "..") or Path(config.name).name != config.name:
                raise RunFolderError(
                    f"--name {config.name!r} is not a folder name (the run folder is <trainer.default_root_dir>/<name>)"
                )
            self.run_dir = Path(config.trainer.default_root_dir or ".") / config.name
            derived = config.checkpoint.dirpath is None
            if derived:
                config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
            if rank_zero_only.rank == 0:  # DDP workers parse again once rank 0 is under way
                claim_checkpoint_folder(
                    Path(config.checkpoint.dirpath),
                    resuming=config.ckpt_path is not None,
                    restart=config.restart,
                    run=self.run_dir if derived else None,
                )
            self.save_config_kwargs["run"] = self.run_dir

        def instantiate_trainer(self, **kwargs):
            # The default RichProgressBar would make `--trainer.enable_progress_bar false`
            # a Lightning error; honour the flag by leaving the bar out. Where stdout is not
            # a terminal (SLURM, nohup, a pipe) a redrawn bar leaves only its last frame in
            # the log: print plain lines instead.
            bar_off = self._get(self.config_init, "trainer", default={}).get("enable_progress_bar") is False
            callbacks = [cb for cb in self.trainer_defaults["callbacks"] if not isinstance(cb, RichProgressBar)]
            if not bar_off:
                callbacks.append(StepBudgetRichProgressBar(refresh_rate=4) if sys.stdout.isatty() else PlainProgress())
            self.trainer_defaults["callbacks"] = callbacks
            if self._get(self.config_init, "trainer", default={}).get("logger") is None:
                kwargs.setdefault("logger", run_loggers(self.run_dir))
            # LearningRateMonitor refuses a Trainer without a logger; `--trainer.logger false`
            # means nothing is logged, the learning rate included.
            if self._get(self.config_init, "trainer", default={}).get("logger") is False:
                self.trainer_defaults["callbacks"] = [
                    callback
                    for callback in self.trainer_defaults["callbacks"]
                    if not isinstance(callback, LearningRateMonitor)
                ]
            return super().instantiate_trainer(**kwargs)

    # LightningCLI reads sys.argv; give it ours so `--help` reads "sepkit train".
    saved_argv, sys.argv = sys.argv, [f"{sys.argv[0]} train", *argv]
    try:
        cli = SepkitCLI(
            SeparationModule,
            SeparationDataModule,
            run=False,
            parser_class=SepkitParser,
            save_config_callback=RunConfigSaver,
            # SeparationModule.configure_optimizers is the one source of the optimizer and
            # LR schedule (model.lr, model.lr_schedule, ...): LightningCLI's --optimizer and
            # --lr_scheduler would silently replace both, so they are not offered.
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                # The progress display is chosen in instantiate_trainer. Rich redraws from
                # its own thread; Lightning's default of 100 redraws a second competes with
                # training for the CPU on small machines, hence refresh_rate=4 there.
                "callbacks": [LearningRateMonitor(logging_interval="step")],
                "gradient_clip_val": 5.0,
                # The run folder's parent; without a logger in the recipe, CSV and TensorBoard
                # logs go to <run>/logs (instantiate_trainer).
                "default_root_dir": "runs",
            },
        )
    except RunFolderError as err:
        print(f"sepkit train: error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    if cli.trainer.is_global_zero:
        print(f"sepkit train: run folder {cli.run_dir}", flush=True)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
        time_cap = time_cap_problem(cli.trainer)
        if time_cap is not None:
            if cli.trainer.is_global_zero:
                print(f"sepkit train: error: {time_cap}", file=sys.stderr)
            return 1
        if cli.config.test_after_fit and cli.datamodule.paths["test"] is not None and not cli.trainer.interrupted:
            checkpoint = cli.trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None else ""
            cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    except NonFiniteError as err:
        # Every rank raises at the same step; one line is enough.
        if cli.trainer.is_global_zero:
            print(f"sepkit train: error: {err}", file=sys.stderr)
        return 1
    except SIGTERMException:
        # Lightning's SystemExit without a code would exit 0, as if the run had finished
        # (sepkit.preemption explains 143 and SLURM).
        if cli.trainer.is_global_zero:
            print(
                f"sepkit train: stopped by SIGTERM at step {cli.trainer.global_step}, exit status "
                f"{SIGTERM_EXIT_STATUS}; resume with --ckpt_path last",
                file=sys.stderr,
                flush=True,
            )
        return SIGTERM_EXIT_STATUS
    if cli.trainer.is_global_zero:
        print(f"sepkit train: run folder {cli.run_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``sepkit <command> [options]`` (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "separate":
        from sepkit.inference import separate_main

        return separate_main(rest)
    if command == "evaluate":
        from sepkit.evaluation import evaluate_main

        return evaluate_main(rest)
    if command == "score":
        from sepkit.evaluation import score_main

        return score_main(rest)
    if command == "compare":
        from sepkit.evaluation import compare_main

        return compare_main(rest)
    if command == "profile":
        from sepkit.profiling import profile_main

        return profile_main(rest)
    if command == "export":
        from sepkit.export import export_main

        return export_main(rest)
    plugins = plugin_entry_points()
    if command not in plugins:
        print(
            f"sepkit: unknown command {command!r}: neither built in nor an installed plugin of entry-point group "
            f"{PLUGIN_GROUP!r} (plugins come from installed package metadata: reinstall the package that provides it)"
            f"\n\n{usage()}",
            file=sys.stderr,
        )
        return 2
    try:
        plugin_main = load_plugin(command, plugins[command])
    except CommandError as err:
        print(f"sepkit: {err}", file=sys.stderr)
        return 2
    return plugin_main(rest)


if __name__ == "__main__":
    sys.exit(main())
