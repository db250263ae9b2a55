"""Clusters: ``sepkit train`` as two "nodes" of a SLURM job (two processes on this machine
with the variables srun sets, gloo over loopback), and a SIGTERMed SLURM run that resumes
from ``last.ckpt``.

The subprocesses import this module for :class:`WorldProbe` and :class:`SlowAfterStep`
(the tests folder is on their ``PYTHONPATH``, see ``conftest.subprocess_env``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from conftest import sepkit_command, subprocess_env, tiny_recipe

RUN_TIMEOUT = 120


class WorldProbe(L.Callback):
    """Writes ``<folder>/rank<global rank>.json`` with the process group this rank trained in."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        world = {
            "world_size": trainer.world_size,
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "num_nodes": trainer.num_nodes,
            "process_group_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "global_step": trainer.global_step,
            # a single-process run has no cluster environment on its strategy
            "cluster": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(world))


class SlowAfterStep(L.Callback):
    """From optimizer step ``step`` on, writes ``marker`` and sleeps ``seconds`` per batch,
    so that a signal sent once the marker exists lands in the middle of training."""

    def __init__(self, step: int, marker: str, seconds: float = 0.3) -> None:
        self.step, self.marker, self.seconds = step, Path(marker), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            self.marker.touch()
            time.sleep(self.seconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_env(rank: int, ntasks: int, port: int, job_id: str) -> dict[str, str]:
    """The variables srun sets for task ``rank`` of a job with one task on each of ``ntasks`` nodes."""
    env = subprocess_env()
    env.update(
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="sepkit-test",  # "bash"/"interactive" would read as an interactive allocation
        SLURM_NTASKS=str(ntasks),
        SLURM_NTASKS_PER_NODE="1",
        SLURM_JOB_NUM_NODES=str(ntasks),
        SLURM_NNODES=str(ntasks),
        SLURM_NODELIST="127.0.0.1" if ntasks == 1 else "node[0-1]",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK"):  # torchrun's, never srun's
        env.pop(name, None)
    return env


def _train(recipe: Path, *flags: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        sepkit_command("train", "--config", str(recipe), "--trainer.enable_progress_bar", "false", *flags),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_slurm_nodes_train_one_ddp_run(tmp_path):
    recipe = tiny_recipe(tmp_path, train_mixtures=8, max_epochs=1)
    probe = {"class_path": "test_cluster.WorldProbe", "init_args": {"folder": str(tmp_path / "world")}}
    flags = [
        "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
        "--trainer.accelerator", "cpu", "--trainer.callbacks+", json.dumps(probe), "--test_after_fit", "false",
    ]  # fmt: skip
    port = _free_port()
    ranks = [_train(recipe, *flags, env=_slurm_env(rank, 2, port, "4242"), cwd=tmp_path) for rank in (0, 1)]
    outputs = []
    for process in ranks:
        try:
            outputs.append(process.communicate(timeout=RUN_TIMEOUT)[0])
        finally:
            if process.poll() is None:
                process.kill()
    for rank, (process, output) in enumerate(zip(ranks, outputs)):
        assert process.returncode == 0, f"rank {rank}:\n{output[-3000:]}"
    worlds = [json.loads((tmp_path / "world" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, world in enumerate(worlds):
        assert world["world_size"] == world["process_group_size"] == 2
        assert world["global_rank"] == world["node_rank"] == rank
        assert world["num_nodes"] == 2 and world["backend"] == "gloo" and world["cluster"] == "SLURMEnvironment"
    # 8 training mixtures, batch 4, split over 2 ranks: 1 step per epoch on each rank
    assert worlds[0]["global_step"] == worlds[1]["global_step"] == 1
    # one set of checkpoints (rank 0 writes), loadable
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


def test_sigterm_saves_last_and_the_job_resumes_from_it(tmp_path):
    recipe = tiny_recipe(tmp_path, train_mixtures=64, max_epochs=1)  # 16 steps, validation only at the end
    marker = tmp_path / "step3"
    slow = {"class_path": "test_cluster.SlowAfterStep", "init_args": {"step": 3, "marker": str(marker)}}
    preemption = {"class_path": "sepkit.preemption.PreemptionCheckpoint"}
    common = ["--trainer.callbacks+", json.dumps(preemption), "--test_after_fit", "false"]
    env = _slurm_env(0, 1, _free_port(), "4343")
    first = _train(recipe, *common, "--trainer.callbacks+", json.dumps(slow), env=env, cwd=tmp_path)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), first.communicate(timeout=RUN_TIMEOUT)[0][-3000:]
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=RUN_TIMEOUT)[0]
    # terminated, not finished: 128 + SIGTERM, as a shell reports a process the signal killed
    assert first.returncode == 143, output[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file(), output[-3000:]
    saved = torch.load(last, weights_only=True)
    stopped_at = saved["global_step"]
    assert 3 <= stopped_at < 16, output[-3000:]  # mid-epoch: no epoch-end or validation save yet
    assert f"SIGTERM at step {stopped_at}: state saved to {last}" in output
    assert f"stopped by SIGTERM at step {stopped_at}, exit status 143; resume with --ckpt_path last" in output
    assert "SLURM auto-requeueing enabled" in output  # Lightning took it for a SLURM job
    assert oct(last.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]  # no partial file left

    # the requeued job: same command plus --ckpt_path last, runs the rest of the epoch only
    probe = {"class_path": "test_cluster.WorldProbe", "init_args": {"folder": str(tmp_path / "world")}}
    second = _train(
        recipe, *common, "--trainer.callbacks+", json.dumps(probe), "--ckpt_path", "last", env=env, cwd=tmp_path
    )
    output = second.communicate(timeout=RUN_TIMEOUT)[0]
    assert second.returncode == 0, output[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in output
    world = json.loads((tmp_path / "world" / "rank0.json").read_text())
    assert world["global_step"] == 16
    # the resumed run goes on writing the same last.ckpt (no last-v1.ckpt beside it)
    assert torch.load(last, weights_only=True)["global_step"] == 16
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_sbatch_template_runs_sepkit_train_with_the_cluster_flags(tmp_path):
    """recipes/slurm/train.sbatch, run by bash with SLURM's variables and stand-ins for the
    two SLURM binaries it calls (srun runs its command once, scontrol lists the nodes),
    builds a `sepkit train` command line that parses: checked with --print_config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = subprocess_env()
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        PYTHON=sys.executable,
        RECIPE=str(tiny_recipe(tmp_path)),
        SLURM_JOB_ID="777",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NTASKS_PER_NODE="4",
    )
    sbatch = Path(__file__).resolve().parents[1] / "recipes" / "slurm" / "train.sbatch"
    result = subprocess.run(
        ["bash", str(sbatch), "--print_config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout[result.stdout.index("seed_everything") :])
    # devices stays the string "4" (Trainer takes int | str | list), num_nodes is an int
    assert config["trainer"]["num_nodes"] == 2 and str(config["trainer"]["devices"]) == "4"
    assert config["trainer"]["strategy"] == "ddp" and config["trainer"]["accelerator"] == "gpu"
    assert {"class_path": "sepkit.preemption.PreemptionCheckpoint"} in config["trainer"]["callbacks"]
    assert config["ckpt_path"] == "last"
    assert "job 777 (restart 0) on 2 node(s)" in result.stdout
