"""GPU readiness check: the compiled Triton SSC tests, bench/ssc.py's CUDA rows, a short
bf16-mixed training run of every model and ``sepkit profile`` on CUDA, each as a child
process with its own timeout, recorded as JSON.

Run from the repository root, normally through ``bash bench/gpu_check.sh`` (which picks the
Python). Writes ``<out>/summary.json`` (machine, versions, per-step status, duration and
numbers) and the per-step outputs (logs, JUnit XML, benchmark/profile JSON, training
metrics CSV) beside it; exits 1 when any step failed or timed out, 0 otherwise. A failing
step is recorded and the next one runs. Needs no network and installs nothing; a missing
package is recorded in ``summary.json`` (``versions``) and fails the steps that need it.

``--device cpu`` is the smoke mode the test suite uses (tests/test_gpu_check.py): the same
commands on the CPU with whatever steps, models and step count it is given.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# sepkit model name -> recipes/synthetic/<file>.yaml
MODEL_RECIPES = {
    "conv_tasnet": "convtasnet",
    "dprnn": "dprnn",
    "sepformer": "sepformer",
    "sudormrf": "sudormrf",
    "afrcnn": "afrcnn",
    "dprcnet": "dprcnet",
    "gc3": "gc3",
}
STEPS = ("triton_tests", "bench_ssc", "train", "profile")
# Per-step timeouts in seconds (train: per model). With the environment probe they add up
# to 450 s, inside the 8-minute budget with room for process start-up.
TIMEOUTS = {"environment": 20, "triton_tests": 100, "bench_ssc": 80, "train": 30, "profile": 40}
PACKAGES = ("torch", "triton", "lightning", "numpy", "soundfile", "pytest")
# Tiny synthetic corpus for the training runs: data generation takes a second or two.
TINY_DATA = [
    "--data.synthetic.speakers=[4, 2, 2]",
    "--data.synthetic.utterances_per_speaker=2",
    "--data.synthetic.mixtures=[8, 4, 4]",  # two batches an epoch: validation every 2 steps
    "--data.synthetic.mixture_seconds=1.0",
    "--data.segment_seconds=0.5",
    "--data.batch_size=4",
    "--data.eval_batch_size=2",
    "--data.num_workers=0",
]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON through a temporary file and one rename, with the
    permissions a plain ``open(path, "w")`` would get under the current umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, allow_nan=False)
            handle.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def package_versions() -> dict[str, str | None]:
    """Installed version of each package the check uses; None when it is not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Runner:
    """Runs the steps as child processes under one time budget and collects their records."""

    def __init__(self, out: Path, budget_s: float, timeout_scale: float) -> None:
        self.out = out
        self.timeout_scale = timeout_scale
        self.python = sys.executable
        self.deadline = time.monotonic() + budget_s
        self.steps: list[dict[str, Any]] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        # The compiled kernels are the point of the check: never the interpreter.
        self.env.pop("TRITON_INTERPRET", None)

    def run(
        self,
        name: str,
        command: list[str],
        timeout_s: float,
        cwd: Path = REPO_ROOT,
        check: Callable[[str], tuple[bool, dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Run one step with its output (stdout and stderr) in ``<out>/<name>.log``; ``check``
        turns the output of a process that exited 0 into (passed, numbers). The timeout is
        cut to what is left of the overall budget; on expiry the step's whole process group
        is killed (a pytest child or data-loader workers included)."""
        timeout_s = min(timeout_s * self.timeout_scale, self.deadline - time.monotonic())
        record: dict[str, Any] = {"step": name, "command": command, "timeout_s": round(max(timeout_s, 0.0), 1)}
        self.steps.append(record)
        if timeout_s < 1:
            record.update(status="not_run", reason="the overall time budget is spent", duration_s=0.0)
            return record
        log = self.out / f"{name}.log"
        start = time.monotonic()
        with log.open("w") as sink:
            process = subprocess.Popen(
                command, cwd=cwd, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode: int | None = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                # Also when the driver itself is stopped (SIGTERM from bench/gpu_check.sh's
                # timeout arrives here as SystemExit): leave no step processes behind.
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        record["duration_s"] = round(time.monotonic() - start, 2)
        output = log.read_text(errors="replace")
        if returncode is None:
            record.update(status="timeout", log_tail=output[-1500:])
            return record
        record["returncode"] = returncode
        passed = returncode == 0
        if passed and check is not None:
            try:
                passed, numbers = check(output)
                record.update(numbers)
            except Exception as error:  # a missing or malformed step output fails that step
                passed = False
                record["check_error"] = f"{type(error).__name__}: {error}"
        record["status"] = "passed" if passed else "failed"
        if not passed:
            record["log_tail"] = output[-1500:]
        return record


def environment_check(runner: Runner, device: str) -> dict[str, Any]:
    """Device name, driver, CUDA and cuDNN versions as the check's Python sees them."""
    probe = (
        "import json, torch\n"
        "info = {'cuda_available': torch.cuda.is_available(), 'torch_cuda': torch.version.cuda,\n"
        "        'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    info.update(device_name=p.name, device_count=torch.cuda.device_count(),\n"
        "                capability=f'{p.major}.{p.minor}', memory_gib=round(p.total_memory / 2**30, 1))\n"
        "print(json.dumps(info))\n"
    )

    def check(output: str) -> tuple[bool, dict[str, Any]]:
        info = json.loads(output.strip().splitlines()[-1])
        return (info["cuda_available"] or device == "cpu"), info

    record = runner.run("environment", [runner.python, "-c", probe], TIMEOUTS["environment"], check=check)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        try:
            record["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (subprocess.TimeoutExpired, OSError) as error:
            record["nvidia_smi"] = f"failed: {error}"
    else:
        record["nvidia_smi"] = None
    return record


def junit_counts(path: Path) -> dict[str, Any]:
    """Outcome counts of a pytest JUnit report and the names of the cases that did not pass."""
    counts = {"passed": 0, "skipped": 0, "failed": 0, "errors": 0}
    not_passed = []
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        outcome = (
            "errors" if "error" in tags else "failed" if "failure" in tags else "skipped" if "skipped" in tags else None
        )
        counts[outcome or "passed"] += 1
        if outcome:
            not_passed.append(f"{case.get('classname')}::{case.get('name')} ({outcome})")
    return {**counts, "not_passed": not_passed}


def triton_tests(runner: Runner, device: str) -> None:
    """tests/test_ssc_triton.py with TRITON_INTERPRET unset: on a GPU its kernel cases
    (TestKernels) run compiled on CUDA tensors in fp32, bf16 and fp16."""
    report = runner.out / "triton_tests.xml"
    command = [runner.python, "-m", "pytest", "tests/test_ssc_triton.py", "-p", "no:cacheprovider", "-q"]

    def check(output: str) -> tuple[bool, dict[str, Any]]:
        counts = junit_counts(report)
        kernel_cases = sum(
            1 for case in ET.parse(report).getroot().iter("testcase") if "TestKernels" in case.get("classname", "")
        )
        counts["kernel_cases"] = kernel_cases
        # On the GPU the kernel cases must have run here, compiled; nothing may skip.
        ran = kernel_cases > 0 if device == "cuda" else counts["passed"] > 0
        return ran and counts["skipped"] == counts["failed"] == counts["errors"] == 0, counts

    runner.run("triton_tests", [*command, f"--junitxml={report}"], TIMEOUTS["triton_tests"], check=check)


def bench_ssc(runner: Runner, device: str) -> None:
    """bench/ssc.py's rows on ``device`` in a quick configuration (bf16, the training dtype,
    at K = 3 and 31; no torch.compile baseline), its JSON written beside the summary."""
    result_json = runner.out / "bench_ssc.json"
    command = [
        runner.python,
        "bench/ssc.py",
        "--device",
        device,
        "--quick",
        "--no-compile",
        "--ks",
        "3,31",
        "--dtypes",
        "bf16",
        "--out",
        str(result_json),
    ]

    def check(output: str) -> tuple[bool, dict[str, Any]]:
        payload = json.loads(result_json.read_text())
        return payload["complete"] and len(payload["rows"]) > 0, {
            "rows": len(payload["rows"]),
            "summary": payload["summary"],
        }

    runner.run("bench_ssc", command, TIMEOUTS["bench_ssc"], check=check)


def training_losses(metrics_csv: Path) -> dict[str, Any]:
    """Logged ``train/loss`` / ``val/loss`` values and the last logged step of a CSVLogger file."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    val = [float(row["val/loss"]) for row in rows if row.get("val/loss")]
    steps = [int(row["step"]) for row in rows if row.get("step")]
    return {"train_loss": train, "val_loss": val, "last_step": max(steps) if steps else None}


def train_models(runner: Runner, device: str, models: list[str], steps: int, precision: str, work: Path) -> None:
    """``sepkit train`` of each model's synthetic recipe for ``steps`` optimiser steps on tiny
    synthetic data (no test after fit); passes when every logged loss is finite and the run
    reached its last step."""
    for model in models:
        cwd = work / model
        cwd.mkdir(parents=True)
        command = [
            runner.python,
            "-m",
            "sepkit.cli",
            "train",
            "--config",
            str(REPO_ROOT / "recipes" / "synthetic" / f"{MODEL_RECIPES[model]}.yaml"),
            "--test_after_fit=false",
            f"--trainer.max_steps={steps}",
            f"--trainer.precision={precision}",
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            "--trainer.devices=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.val_check_interval=1.0",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            # CSV only: the default TensorBoard logger needs a package the check does not.
            '--trainer.logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs/csv"}}',
            "--data.synthetic_root=data",
            *TINY_DATA,
        ]
        metrics_copy = runner.out / f"train_{model}_metrics.csv"

        def check(output: str, cwd: Path = cwd, copy: Path = metrics_copy) -> tuple[bool, dict[str, Any]]:
            (metrics,) = cwd.glob("runs/csv/**/metrics.csv")
            shutil.copyfile(metrics, copy)
            losses = training_losses(metrics)
            values = losses["train_loss"] + losses["val_loss"]
            finite = bool(losses["train_loss"]) and all(math.isfinite(v) for v in values)
            numbers = {
                "steps": steps,
                "last_step": losses["last_step"],
                "loss_finite": finite,
                # JSON has no NaN: a non-finite loss is recorded as its string.
                "first_train_loss": _number(losses["train_loss"][0]) if losses["train_loss"] else None,
                "last_train_loss": _number(losses["train_loss"][-1]) if losses["train_loss"] else None,
                "last_val_loss": _number(losses["val_loss"][-1]) if losses["val_loss"] else None,
            }
            return finite and losses["last_step"] == steps - 1, numbers

        runner.run(f"train_{model}", command, TIMEOUTS["train"], cwd=cwd, check=check)


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def profile(runner: Runner, device: str, models: list[str], seconds: float) -> None:
    """``sepkit profile`` (default model configurations) on ``device``: every model in one
    process when all are chosen, else one process per model."""
    targets = ["all"] if set(models) == set(MODEL_RECIPES) else models
    for target in targets:
        name = "profile" if len(targets) == 1 else f"profile_{target}"
        result_json = runner.out / f"{name}.json"
        command = [runner.python, "-m", "sepkit.cli", "profile", target, "--device", device]
        command += ["--seconds", str(seconds), "--json", str(result_json)]

        def check(output: str, result_json: Path = result_json) -> tuple[bool, dict[str, Any]]:
            stats = json.loads(result_json.read_text())
            ok = all(s["parameters"] > 0 and s["macs"] > 0 and s["peak_training_bytes"] > 0 for s in stats.values())
            return ok, {"models": stats}

        runner.run(name, command, TIMEOUTS["profile"] / len(targets), check=check)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke mode for the tests")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/gpu_check_<UTC time>")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--models", default=",".join(MODEL_RECIPES), help="models to train and profile")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--profile-seconds", type=float, default=2.0)
    parser.add_argument("--budget-s", type=float, default=450.0, help="total time for all steps (default 450)")
    parser.add_argument(
        "--timeout-scale", type=float, default=1.0, help="multiplies every per-step timeout (slow CPU smoke runs)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    steps = args.steps.split(",")
    models = args.models.split(",")
    for name, chosen, known in (("step", steps, STEPS), ("model", models, MODEL_RECIPES)):
        unknown = [value for value in chosen if value not in known]
        if unknown:
            parser.error(f"unknown {name}(s) {unknown}; choose from {list(known)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.out or REPO_ROOT / "bench" / "results" / f"gpu_check_{started.replace(':', '')}"
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, args.budget_s, args.timeout_scale)
    summary: dict[str, Any] = {
        "check": "gpu_check",
        "device_requested": args.device,
        "started": started,
        "host": platform.node(),
        "python_executable": sys.executable,
        "versions": package_versions(),
        "settings": {
            "steps": steps,
            "models": models,
            "train_steps": args.train_steps,
            "precision": args.precision,
            "profile_seconds": args.profile_seconds,
            "budget_s": args.budget_s,
            "timeout_scale": args.timeout_scale,
        },
        "device": {},
        "steps": runner.steps,
    }
    summary["missing_packages"] = sorted(name for name, version in summary["versions"].items() if version is None)
    start = time.monotonic()
    environment = environment_check(runner, args.device)
    device_keys = ("device_name", "capability", "memory_gib", "nvidia_smi", "torch_cuda", "cudnn", "cuda_available")
    summary["device"] = {key: environment.get(key) for key in device_keys}
    with tempfile.TemporaryDirectory(prefix="sepkit_gpu_check_") as work:
        for step in steps:
            if step == "triton_tests":
                triton_tests(runner, args.device)
            elif step == "bench_ssc":
                bench_ssc(runner, args.device)
            elif step == "train":
                train_models(runner, args.device, models, args.train_steps, args.precision, Path(work))
            elif step == "profile":
                profile(runner, args.device, models, args.profile_seconds)
            write_json_atomic(out / "summary.json", summary)  # partial results survive a kill
    failed = [record["step"] for record in runner.steps if record["status"] != "passed"]
    summary.update(total_s=round(time.monotonic() - start, 1), failed_steps=failed, passed=not failed)
    write_json_atomic(out / "summary.json", summary)
    for record in runner.steps:
        print(f"{record['status']:>8}  {record.get('duration_s', 0):7.1f} s  {record['step']}")
    print(f"{'all steps passed' if not failed else f'FAILED: {failed}'}; wrote {out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
