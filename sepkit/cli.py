"""``sepkit`` command line: train | separate | evaluate | prepare | profile."""

from __future__ import annotations

import sys

USAGE = """usage: sepkit <command> [options]

commands:
  train      train a model from a LightningCLI YAML recipe (sepkit train --config recipes/...yaml)
  separate   separate wav/flac files or folders with a checkpoint
  evaluate   SI-SDR(i) of a checkpoint on a test table or folder: per-utterance CSV + summary
  prepare    build WSJ0-2mix/3mix, LibriMix, WHAM!, WHAMR! or your own corpus
  profile    parameters, MACs and peak memory of a model

Run `sepkit <command> --help` for the options of a command."""


def train_main(argv: list[str]) -> int:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from sepkit.data.datamodule import SeparationDataModule
    from sepkit.training import SeparationModule, model_data_settings

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
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
            parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint")
            parser.add_argument(
                "--test_after_fit", type=bool, default=True, help="evaluate the best checkpoint on the test split"
            )

        def instantiate_trainer(self, **kwargs):
            # The default RichProgressBar would make `--trainer.enable_progress_bar false`
            # a Lightning error; honour the flag by leaving the bar out.
            if self._get(self.config_init, "trainer", default={}).get("enable_progress_bar") is False:
                self.trainer_defaults["callbacks"] = [
                    callback
                    for callback in self.trainer_defaults["callbacks"]
                    if not isinstance(callback, RichProgressBar)
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
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                # Rich redraws from its own thread; Lightning's default of 100 redraws a
                # second competes with training for the CPU on small machines.
                "callbacks": [RichProgressBar(refresh_rate=4)],
                "gradient_clip_val": 5.0,
                "logger": [
                    # Separate roots: two loggers in one folder would each claim a version_N.
                    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs/csv"}},
                    {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": "runs/tensorboard"},
                    },
                ],
            },
        )
    finally:
        sys.argv = saved_argv
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    if cli.config.test_after_fit and cli.datamodule.paths["test"] is not None and not cli.trainer.interrupted:
        checkpoint = cli.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
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
    if command == "profile":
        from sepkit.profiling import profile_main

        return profile_main(rest)
    if command == "prepare":
        from sepkit.prepare import main as prepare_main

        return prepare_main(rest)
    print(f"sepkit: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
