"""The DAG through a real SLURM cluster on this machine (scripts/slurm_local.sh, Debian's SLURM 22.05).

Every job of a small matrix runs as a SLURM job through the unedited `workflow/profiles/slurm`, the summary
equals a local run's but for timings, a second invocation submits nothing, and a training job killed at its
time limit is resubmitted by the profile's retries and resumes from last.pt to the uninterrupted run's weights.
The cluster test needs root and `apt-get install slurm-wlm slurmdbd munge mariadb-server` (`.ci/run` does
both) and skips without them; deselect it with `-m "not slurm"`. It is one test so that pytest-xdist never
gives its parts to two workers (there is one cluster per machine). The other tests here need no cluster.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"
SCRIPT = REPO / "scripts" / "slurm_local.sh"
PROFILE = "workflow/profiles/slurm"  # as the README runs it, from the repository root
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"
TOOLS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mungekey", "mariadbd")
# Rules the profile sends to the gpu partition; everything else goes to cpu.
GPU_PARTITION_RULES = {"train", "evaluate", "profile"}
# Columns that measure the machine rather than the run: wall-clock timings and the process's peak RSS on CPU.
MEASURED = re.compile(r"^(train_seconds|latency_.*|peak_mem_mib)$")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
# The plugin checks job states this many seconds after a check that saw a job end, 10 s later each time
# one saw none (its default, 40 s, suits real jobs; 8 s catches this test's 10-30 s jobs and the one-minute
# limit's kill, due 60-90 s into a job, at the 92 s check).
FAST_POLL = ("--slurm-init-seconds-before-status-checks", "8")
# The time-limit run: its trainer is paused once last.pt holds STOP_AFTER_SAVES checkpoints, so the first
# attempt outlives its one-minute limit whatever this machine's speed; SLURM then kills it.
TIME_LIMIT_ITERATIONS, TIME_LIMIT_EVERY, STOP_AFTER_SAVES = 80, 4, 5


def _unavailable() -> str | None:
    """Why the cluster cannot run here, or None."""
    if not SNAKEMAKE.exists():
        return "snakemake is not installed beside this python"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -r requirements-cpu.txt)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"SLURM packages are not installed ({', '.join(missing)} missing): apt-get install -y {PACKAGES}"
    if os.geteuid() != 0:
        return "the local SLURM cluster (scripts/slurm_local.sh) starts its daemons as root"
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    env.pop("SLURM_CONF", None)  # the commands find the cluster at /etc/slurm/slurm.conf, as jobs do
    return env


def _run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=_env(), timeout=timeout, **kwargs)


def _snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return _run([SNAKEMAKE, "-s", REPO / "Snakefile", "-d", workdir, *args], timeout=timeout, cwd=REPO)


def _local_reference(workdir: Path, target: str) -> subprocess.Popen:
    """A local run (one core) in the background, its output in workdir/snakemake.out. It runs at a lower CPU
    priority (nice 10): it is needed only at the end, and the SLURM jobs it would slow down are not."""
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", target]
    with open(workdir / "snakemake.out", "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO,
                                preexec_fn=lambda: os.nice(10))


def _snakemake_bg(workdir: Path, *args: str) -> subprocess.Popen:
    """Snakemake in the background, its output in workdir/snakemake.out."""
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    with open(workdir / "snakemake.out", "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)


def _finish(process: subprocess.Popen, workdir: Path) -> None:
    process.wait(timeout=900)
    assert process.returncode == 0, (workdir / "snakemake.out").read_text()[-4000:]


def _stop(process: subprocess.Popen | None) -> None:
    """End a background Snakemake this test started that is still running (it cancels its SLURM jobs)."""
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(timeout=120)


def _sacct(job_ids) -> dict[str, tuple[str, str, str]]:
    """SLURM's accounting record (state, partition, job name) of each job id."""
    result = _run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,Partition,JobName", "-j", ",".join(job_ids)],
                  timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.strip()]
    return {row[0]: (row[1].split()[0], row[2], row[3]) for row in rows}


def _all_job_ids() -> set[str]:
    result = _run(["sacct", "-X", "-n", "-P", "-a", "-o", "JobIDRaw", "-S", "2000-01-01"], timeout=60)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def _submissions(output: str) -> list[tuple[str, str, str]]:
    """(rule, SLURM job id, SLURM log) of every job Snakemake submitted, from its output."""
    found = []
    for _, slurm_id, log in SUBMITTED.findall(output):
        rule = re.search(r"/rule_([^/]+)/", log).group(1)
        found.append((rule, slurm_id, log))
    return found


def _matrix(**overrides) -> dict:
    """A small matrix of the default DAG on synthetic NYUD (tests/test_pipeline.py's tiny set-up)."""
    config = {
        "scale": "tiny",
        "results_dir": "results",
        "threads_per_job": 1,
        "seeds": [0],
        "datasets": {"nyud": {"root": None,
                              "synthetic": {"n_train": 6, "n_val": 3, "height": 48, "width": 64, "seed": 0}}},
        "models": {"mtl": ["default"], "stl": ["stl_depth"]},
        "resolution_sweep": {"models": []},
        "overrides": {"train": {"iterations": 4, "ckpt_every": 2, "log_every": 2, "batch_size": 2},
                      "data": {"size": [48, 64]}, "eval": {"batch_size": 3}},
    }
    config.update(overrides)
    return config


def _workdir(root: Path, config: dict) -> Path:
    (root / "workflow").mkdir(parents=True)
    (root / "workflow" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _job_resources(output: str) -> dict[str, set[str]]:
    """Rule -> the `resources:` lines Snakemake printed for its jobs."""
    found: dict[str, set[str]] = {}
    for rule, resources in re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", output, re.M):
        found.setdefault(rule, set()).add(resources)
    return found


@pytest.mark.parametrize("gpus", [0, 2])
def test_gpu_resource_only_where_gpus_per_run_is_set(gpus, tmp_path):
    """train asks for gpus_per_run GPUs, evaluate and profile for one, and nothing else for any (no cluster needed)."""
    if not SNAKEMAKE.exists():
        pytest.skip("snakemake is not installed beside this python")
    workdir = _workdir(tmp_path, _matrix(gpus_per_run=gpus))
    result = _snakemake(workdir, "-n", "-p", "all", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resources = _job_resources(result.stdout)
    assert {"make_synthetic", "train", "evaluate", "profile", "aggregate"} <= set(resources)
    for rule, lines in resources.items():
        expected = {"train": gpus, "evaluate": min(gpus, 1), "profile": min(gpus, 1)}.get(rule, 0)
        for line in lines:
            found = re.search(r"\bgpu=(\d+)", line)
            assert (int(found.group(1)) if found else 0) == expected, (rule, line)


def _start(state: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=300,
                          env=dict(_env(), PAMM_SLURM_DIR=str(state), **env))


def _check_failures_are_named(root: Path) -> None:
    """The script names what failed, a port in use or a daemon that did not start, and leaves nothing running."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _start(root / "busy_port", PAMM_SLURM_DBD_PORT=str(port))
    assert result.returncode == 1 and f"port {port} (for slurmdbd) is in use" in result.stderr, result.stderr
    bad_key = root / "bad_key"
    (bad_key / "etc").mkdir(parents=True)
    (bad_key / "etc" / "munge.key").write_bytes(b"too short")
    result = _start(bad_key)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "munged did not start" in result.stderr, result.stderr
    assert "Keyfile must be at least 32 bytes" in result.stderr, result.stderr  # munged's own reason, from its log
    assert not list((bad_key / "run").glob("*.pid")) and not Path("/etc/slurm/slurm.conf").is_symlink()


@pytest.fixture
def cluster(tmp_path):
    """A one-node cluster, stopped afterwards with nothing left running."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    _check_failures_are_named(tmp_path / "failures")
    state = tmp_path / "cluster"
    started = _start(state)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield state
    finally:
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300,
                                 env=dict(_env(), PAMM_SLURM_DIR=str(state)))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "nothing left running" in stopped.stdout, stopped.stdout
        assert not list((state / "run").glob("*.pid")), "a daemon's pid file is left"
        assert not Path("/etc/slurm/slurm.conf").is_symlink()


def _trainer_pid(workdir: Path) -> int | None:
    """The `pamm-bench train` process running in workdir, if any."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if len(argv) > 2 and argv[1].endswith(b"pamm-bench") and argv[2] == b"train" \
                    and Path(os.readlink(proc / "cwd")) == workdir:
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


class _TimeLimitWatch(threading.Thread):
    """Records the iteration in run_dir/last.pt each time the file changes; pauses the first attempt's
    trainer (SIGSTOP) once last.pt holds `stop_at` iterations, so that attempt runs into its time limit."""

    def __init__(self, workdir: Path, run_dir: Path, stop_at: int):
        super().__init__(daemon=True)
        self.workdir, self.path, self.stop_at = workdir, run_dir / "last.pt", stop_at
        self.iterations: list[int] = []
        self.paused: int | None = None  # the iteration in last.pt when the trainer was paused
        self.done = threading.Event()

    def run(self) -> None:
        seen = None
        while not self.done.wait(0.2):
            try:
                stat = self.path.stat()
                if (stat.st_mtime_ns, stat.st_ino) != seen:
                    iteration = int(torch.load(self.path, map_location="cpu", weights_only=False)["iteration"])
                    seen = (stat.st_mtime_ns, stat.st_ino)
                    if not self.iterations or self.iterations[-1] != iteration:
                        self.iterations.append(iteration)
            except (OSError, EOFError, RuntimeError, KeyError):
                continue  # not there yet, or replaced while being read
            if self.paused is None and self.iterations and self.iterations[-1] >= self.stop_at:
                pid = _trainer_pid(self.workdir)
                if pid is not None:
                    os.kill(pid, signal.SIGSTOP)
                    self.paused = self.iterations[-1]


class _TimeLimitRun:
    """The run of one training job whose `runtime` (1 minute) is too short, and its uninterrupted reference."""

    target = "results/runs/nyud/mtl/default/seed0/checkpoint.pt"

    def __init__(self, root: Path):
        from pamm.data import make_synthetic

        # Its data is made here and given as a dataset root: the DAG has been tried whole beside it.
        data = root / "nyud"
        make_synthetic(data, "nyud", n_train=6, n_val=3, height=48, width=64, seed=0, progress=False)
        config = _matrix(models={"mtl": ["default"]}, datasets={"nyud": {"root": str(data), "synthetic": None}})
        config["overrides"]["train"].update(
            {"iterations": TIME_LIMIT_ITERATIONS, "ckpt_every": TIME_LIMIT_EVERY, "log_every": TIME_LIMIT_EVERY})
        # The profile with one value changed: train's runtime, to one minute.
        profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
        assert profile["retries"] >= 1 and profile["set-resources"]["train"]["runtime"] > 1
        short = copy.deepcopy(profile)
        short["set-resources"]["train"]["runtime"] = 1
        self.profile = root / "short_runtime_profile"
        self.profile.mkdir(parents=True)
        (self.profile / "config.yaml").write_text(yaml.safe_dump(short))
        self.slurm_dir = _workdir(root / "slurm", config)
        self.reference_dir = _workdir(root / "uninterrupted", config)
        self.run = self.slurm_dir / "results/runs/nyud/mtl/default/seed0"
        self.watch = _TimeLimitWatch(self.slurm_dir, self.run, STOP_AFTER_SAVES * TIME_LIMIT_EVERY)

    def start(self) -> None:
        self.watch.start()
        self.slurm = _snakemake_bg(self.slurm_dir, "--workflow-profile", str(self.profile), *FAST_POLL, self.target)
        self.reference = _local_reference(self.reference_dir, self.target)

    def check(self) -> str:
        try:
            self.slurm.wait(timeout=900)
        finally:
            self.watch.done.set()
            self.watch.join()
        output = (self.slurm_dir / "snakemake.out").read_text()
        assert self.slurm.returncode == 0, output[-6000:]
        _finish(self.reference, self.reference_dir)

        # SLURM cut the first attempt at its time limit; the profile's retries resubmitted it; that finished.
        assert self.watch.paused is not None, f"the trainer was never paused; last.pt: {self.watch.iterations}"
        attempts = [slurm_id for rule, slurm_id, _ in _submissions(output) if rule == "train"]
        states = _sacct(attempts)
        ends = [states[slurm_id][0] for slurm_id in attempts]
        # (On a loaded machine the resumed attempt may run into the limit too; the profile's retries cover it.)
        assert len(ends) >= 2 and ends == ["TIMEOUT"] * (len(ends) - 1) + ["COMPLETED"], (attempts, states)
        assert "SLURM status is: 'TIMEOUT'" in output
        provenance = json.loads((self.run / "provenance.json").read_text())
        assert provenance["environment"]["slurm"]["job_id"] == attempts[-1]
        # Resumed, not restarted: last.pt held `paused` iterations when the first attempt was cut and never
        # went back (a restart would have written TIME_LIMIT_EVERY again); the log has every row once.
        seen = self.watch.iterations
        assert seen == sorted(seen) and seen[-1] == TIME_LIMIT_ITERATIONS, seen
        assert self.watch.paused >= STOP_AFTER_SAVES * TIME_LIMIT_EVERY
        assert seen.index(self.watch.paused) < len(seen) - 1
        log = (self.run / "train_log.csv").read_text().splitlines()
        assert [int(line.split(",")[0]) for line in log[1:]] == list(
            range(TIME_LIMIT_EVERY, TIME_LIMIT_ITERATIONS + 1, TIME_LIMIT_EVERY))

        # The same weights and metrics as the uninterrupted run.
        from pamm.engine.evaluate import evaluate_run

        reference_run = self.reference_dir / "results/runs/nyud/mtl/default/seed0"
        ours = torch.load(self.run / "checkpoint.pt", weights_only=False)["model"]
        theirs = torch.load(reference_run / "checkpoint.pt", weights_only=False)["model"]
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
        metrics = evaluate_run(self.run, device="cpu", progress=False)["metrics"]
        reference_metrics = evaluate_run(reference_run, device="cpu", progress=False)["metrics"]
        assert metrics == reference_metrics
        return (f"train attempts {attempts}: {ends}; last.pt paused at "
                f"{self.watch.paused}, seen {seen}; metrics (resumed = uninterrupted) {metrics}")


def _check_matrix(root: Path, time_limit: _TimeLimitRun) -> None:
    """The matrix through the unedited profile: every job a SLURM job, a local run's summary, then nothing to do."""
    config = _matrix()
    local_dir = _workdir(root / "local", config)
    slurm_dir = _workdir(root / "slurm", config)
    local = _local_reference(local_dir, "results/summary.csv")
    try:
        result = _snakemake(slurm_dir, "--workflow-profile", PROFILE, *FAST_POLL, "all")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        _finish(local, local_dir)
    finally:
        _stop(local)

    # Every job but the `all` target ran as a SLURM job: one submission each, all COMPLETED, on the
    # partition the profile gives its rule, named after this Snakemake run, its SLURM log kept.
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output)
    submitted = _submissions(output)
    assert sorted(rule for rule, _, _ in submitted) == sorted(rule for rule in finished if rule != "all")
    assert {"make_synthetic", "check_dataset", "train", "evaluate", "profile", "aggregate", "figures"} <= set(finished)
    run_uuid = re.search(r"SLURM run ID: (\S+)", output).group(1)
    states = _sacct([slurm_id for _, slurm_id, _ in submitted])
    for rule, slurm_id, log in submitted:
        state, partition, name = states[slurm_id]
        assert (state, name) == ("COMPLETED", run_uuid), (rule, slurm_id, state, name)
        assert partition == ("gpu" if rule in GPU_PARTITION_RULES else "cpu"), (rule, partition)
        assert Path(log).is_file() and Path(log).name == f"{slurm_id}.log"
    # Each run's provenance names the SLURM job that trained it.
    train_ids = {re.search(r"rule_train/([^/]+)/", log).group(1): slurm_id
                 for rule, slurm_id, log in submitted if rule == "train"}
    for model, variant in (("mtl", "default"), ("stl", "stl_depth")):
        provenance = json.loads((slurm_dir / f"results/runs/nyud/{model}/{variant}/seed0/provenance.json").read_text())
        assert provenance["environment"]["slurm"]["job_id"] == train_ids[f"nyud_{model}_{variant}_0"]
        assert provenance["environment"]["slurm"]["partition"] == "gpu"

    # The same numbers as the local run, but for what measures the machine.
    ours = pd.read_csv(slurm_dir / "results" / "summary.csv")
    theirs = pd.read_csv(local_dir / "results" / "summary.csv")
    assert list(ours.columns) == list(theirs.columns)
    kept = [column for column in ours.columns if not MEASURED.match(column)]
    assert len(kept) > 40 and {"semseg_miou", "depth_rmse", "delta_m_pct", "gflops", "config_hash"} <= set(kept)
    pd.testing.assert_frame_equal(ours[kept], theirs[kept], check_exact=True)
    assert (slurm_dir / "results" / "figures" / "metrics_by_model.png").stat().st_size > 0

    # A second invocation submits nothing (once the time-limit run, which shares the cluster, is over).
    print(time_limit.check())
    jobs = _all_job_ids()
    again = _snakemake(slurm_dir, "--workflow-profile", PROFILE, *FAST_POLL, "all")
    again_output = again.stdout + again.stderr
    assert again.returncode == 0, again_output[-4000:]
    assert "Nothing to be done" in again_output
    assert not _submissions(again_output)
    assert _all_job_ids() == jobs


@pytest.mark.slurm
def test_dag_on_a_local_slurm_cluster(cluster, tmp_path):
    """Both scenarios at once: the time-limit run mostly waits for SLURM's kill while the matrix runs."""
    time_limit = _TimeLimitRun(tmp_path / "time_limit")
    time_limit.start()
    try:
        _check_matrix(tmp_path / "matrix", time_limit)
    finally:
        time_limit.watch.done.set()
        _stop(getattr(time_limit, "slurm", None))
        _stop(getattr(time_limit, "reference", None))


def test_provenance_names_the_slurm_job_only_inside_one(monkeypatch):
    from pamm.engine.provenance import slurm_job

    for var in ("SLURM_JOB_ID", "SLURM_CLUSTER_NAME", "SLURM_JOB_PARTITION", "SLURMD_NODENAME"):
        monkeypatch.delenv(var, raising=False)
    assert slurm_job() is None
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    assert slurm_job() == {"job_id": "4711", "cluster": None, "partition": "gpu", "node": None}
