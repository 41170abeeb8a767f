"""The real Snakefile through ``--profile profiles/slurm`` on a one-node SLURM cluster on 127.0.0.1.

The module fixture installs Debian's ``slurm-wlm`` and ``munge`` if missing (needs root), writes a
``slurm.conf`` whose partitions and GPU types are the ones the profile names (a stand-in GPU per type),
starts ``munged``, ``slurmctld`` and ``slurmd`` in the foreground as child processes in their own
sessions, and stops exactly those processes (by pid) when the module ends, also after a failure.
Run with ``make test-slurm``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SNAKEMAKE, TEST_CONFIG, copy_workflow

from strata.training.monitor import LIVE_LOG, TENSORBOARD

# pytest-timeout interrupts with a signal, so the fixture finalisers still stop the daemons
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]

SLURM_CONF = Path("/etc/slurm/slurm.conf")  # job steps drop SLURM_CONF, so it must be the default path
GRES_CONF = SLURM_CONF.with_name("gres.conf")
CONF_MARKER = "# written by strata tests/test_slurm.py"
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
TRAIN_RULE, TRAIN_RUN = "train_posevae", "pose"
TARGETS = ("results/cache/ct/manifest.parquet", "results/cache/ct/reports.parquet",
           "results/cache/pose/manifest.parquet", f"results/posevae/{TRAIN_RUN}/train_log.parquet")
# a shorter training than the demo's: 20 steps, checkpoints at 10 and 20


def short_training() -> dict:
    """The test config (a --configfile is the whole config) with a 20-step pose VAE run."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["models"]["posevae"][TRAIN_RUN]["train"].update(total_steps=20, save_every=10)
    return config
RUN_TIMEOUT = 900  # seconds; the run is wrapped in `timeout -s KILL` so a hung poll cannot hang the test


@dataclass
class Cluster:
    """The started cluster: its state folder and the daemons this test owns."""

    root: Path
    procs: dict[str, subprocess.Popen]

    @property
    def ctld_log(self) -> Path:
        return self.root / "slurmctld.log"

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as key -> value (finished jobs stay visible for MinJobAge)."""
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                             check=True).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))


def _ensure_installed() -> None:
    """apt-get install slurm-wlm and munge when a binary is missing; skip when that is impossible."""
    if all(shutil.which(name) for name in SLURM_BINARIES):
        return
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not all(shutil.which(name) for name in SLURM_BINARIES):
        pytest.skip(f"apt-get could not install slurm-wlm and munge:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _partitions() -> list[str]:
    """Every partition the profile names: the default one first, then the per-rule ones."""
    names = [PROFILE["default-resources"]["slurm_partition"]]
    for resources in PROFILE.get("set-resources", {}).values():
        if resources.get("slurm_partition") and resources["slurm_partition"] not in names:
            names.append(resources["slurm_partition"])
    return names


def _gpu_models() -> list[str]:
    """The GPU types the profile asks for (``gpu_model``): the loopback node offers one of each."""
    models = {res["gpu_model"] for res in PROFILE.get("set-resources", {}).values() if res.get("gpu_model")}
    return sorted(models)


def _gres_conf() -> str:
    # a stand-in device file: SLURM schedules and hands out the GPU; torch (CPU build) sees none
    return "\n".join([CONF_MARKER, "AutoDetect=off"] + [
        f"NodeName=localhost Name=gpu Type={model} File=/dev/null" for model in _gpu_models()]) + "\n"


def _slurm_conf(root: Path, cpus: int) -> str:
    partitions = _partitions()
    gres = ",".join(f"gpu:{model}:1" for model in _gpu_models())
    lines = [
        CONF_MARKER,
        "ClusterName=strata-loopback",
        "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "GresTypes=gpu",
        "ReturnToService=2",
        "MinJobAge=3600",  # finished jobs stay in squeue/scontrol: the status command without accounting
        "SlurmdParameters=config_overrides",  # the declared node, not the probed one (mem requests fit)
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=262144 State=UNKNOWN"
        + (f" Gres={gres}" if gres else ""),
    ]
    for i, name in enumerate(partitions):
        lines.append(f"PartitionName={name} Nodes=localhost MaxTime=INFINITE State=UP"
                     + (" Default=YES" if i == 0 else ""))
    return "\n".join(lines) + "\n"


def _wait(predicate, what: str, cluster_root: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(cluster_root.glob("*.log")))
    raise AssertionError(f"timed out waiting for {what}{logs}")


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each daemon this test started (by its pid), SIGKILL after 15 s; newest first."""
    for name in reversed(list(procs)):
        proc = procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _daemon(cmd: list[str]) -> subprocess.Popen:
    """Start a daemon in the foreground in its own session (signals to pytest's group miss it)."""
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def _munge_works() -> bool:
    encode = subprocess.run(["munge", "-n"], capture_output=True, check=False)
    return encode.returncode == 0 and subprocess.run(["unmunge"], input=encode.stdout,
                                                     capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the loopback SLURM cluster needs root (daemons, /etc/slurm/slurm.conf)")
    _ensure_installed()
    for conf in (SLURM_CONF, GRES_CONF):
        if conf.exists() and CONF_MARKER not in conf.read_text():
            pytest.skip(f"{conf} exists and was not written by this test; not touching a real cluster")
    if not (_port_free(6817) and _port_free(6818)):
        pytest.skip("a SLURM daemon is already listening on 6817/6818")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    procs: dict[str, subprocess.Popen] = {}
    cluster = Cluster(root, procs)
    try:
        if not _munge_works():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            procs["munged"] = _daemon(["munged", "--foreground", "--force", f"--log-file={root}/munged.log"])
            _wait(_munge_works, "munged", root, timeout=30)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(_slurm_conf(root, cpus=max(4, os.cpu_count() or 1)))
        GRES_CONF.write_text(_gres_conf())
        # -D: stay in the foreground, so the pid we hold is the daemon's; -c: a fresh state
        procs["slurmctld"] = _daemon(["slurmctld", "-D", "-c"])
        procs["slurmd"] = _daemon(["slurmd", "-D", "-N", "localhost"])
        _wait(lambda: _node_state() == "idle", "the node to become idle", root)
        yield cluster
    finally:
        if "slurmctld" in procs and procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, check=False)  # our cluster only
        _stop(procs)
        for conf in (SLURM_CONF, GRES_CONF):
            if conf.exists() and CONF_MARKER in conf.read_text():
                conf.unlink()


def _node_state() -> str:
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, check=False)
    return proc.stdout.split()[0].rstrip("*") if proc.returncode == 0 and proc.stdout.split() else ""


# --------------------------------------------------------------------------- the runs


@dataclass
class Runs:
    """The same targets built through the SLURM profile and locally."""

    slurm: Path
    local: Path
    slurm_output: str  # snakemake's stdout + stderr of the SLURM run


def _workflow(dest: Path) -> Path:
    workdir = copy_workflow(dest)
    shutil.copytree(REPO / "profiles", workdir / "profiles")
    (workdir / "short_training.yaml").write_text(yaml.safe_dump(short_training()))
    return workdir


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory) -> Runs:
    """Both runs at once (the SLURM run mostly waits on polls), in two copies of the workflow."""
    slurm_dir = _workflow(tmp_path_factory.mktemp("slurm_run"))
    local_dir = _workflow(tmp_path_factory.mktemp("local_run"))
    common = ["--configfile=short_training.yaml", *TARGETS]
    local_log = local_dir / "snakemake.out"  # a file, not a pipe nobody reads while the SLURM run goes on
    with local_log.open("w") as out:
        local = subprocess.Popen(["nice", "-n", "5", SNAKEMAKE, "--cores", "2", *common], cwd=local_dir,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    remote = subprocess.Popen(
        ["timeout", "-s", "KILL", str(RUN_TIMEOUT), SNAKEMAKE, "--profile", "profiles/slurm",
         # no accounting on the loopback cluster: sacct never sees a job finish
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
         "--seconds-between-status-checks", "5", *common],
        cwd=slurm_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        remote_out, _ = remote.communicate(timeout=RUN_TIMEOUT + 60)
        local.wait(timeout=RUN_TIMEOUT)
    finally:  # also when pytest-timeout interrupts: no snakemake is left polling or running jobs
        for proc in (remote, local):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert remote.returncode == 0, f"snakemake through SLURM failed ({remote.returncode}):\n{remote_out}"
    assert local.returncode == 0, f"the local run failed:\n{local_log.read_text()}"
    return Runs(slurm_dir, local_dir, remote_out)


def _job_ids(output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def _slurm_logs(workdir: Path) -> dict[str, Path]:
    """SLURM job id -> its log file in the profile's slurm-logdir."""
    return {p.stem: p for p in (workdir / PROFILE["slurm-logdir"]).rglob("*.log")}


def test_jobs_ran_as_slurm_jobs(cluster, runs):
    """Every job of the run was an sbatch job that slurmctld ran to completion; none ran locally."""
    job_ids = _job_ids(runs.slurm_output)
    planned = int(re.search(r"^total\s+(\d+)$", runs.slurm_output, re.MULTILINE).group(1))
    shards = len(re.findall(r"^preprocess_ct_\d+\s+1$", runs.slurm_output, re.MULTILINE))
    assert shards >= 1
    # one preprocess_ct job per shard of studies, plus demo data (2), ct_manifest, reports, pose cache, training
    assert len(set(job_ids)) == len(job_ids) == planned == shards + 6, runs.slurm_output
    assert "localrule" not in runs.slurm_output
    ctld = cluster.ctld_log.read_text()
    logs = _slurm_logs(runs.slurm)
    assert sorted(logs) == sorted(job_ids)  # one SLURM log per job, kept by the profile
    for job_id in job_ids:
        assert f"_job_complete: JobId={job_id} WEXITSTATUS 0" in ctld, f"slurmctld did not run job {job_id}"
        info = cluster.job(job_id)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), info
        # the job step ran the rule with Snakemake's slurm-jobstep executor
        rule = logs[job_id].relative_to(runs.slurm / PROFILE["slurm-logdir"]).parts[0].removeprefix("rule_")
        text = logs[job_id].read_text()
        assert "--executor slurm-jobstep" in text and f"rule {rule}:" in text, text


def test_profile_resources_reach_sbatch(cluster, runs):
    """SLURM was asked for the profile's default resources and, per rule, its set-resources."""
    job = {}
    for job_id, log in _slurm_logs(runs.slurm).items():
        job[log.relative_to(runs.slurm / PROFILE["slurm-logdir"]).parts[0].removeprefix("rule_")] = \
            cluster.job(job_id)
    defaults = PROFILE["default-resources"]
    train = {**defaults, **PROFILE["set-resources"][TRAIN_RULE]}
    ct_shard = next(rule for rule in job if rule.startswith("preprocess_ct_"))
    for rule, wanted, cpus in (("preprocess_pose", defaults, "1"), (ct_shard, defaults, "1"),
                               (TRAIN_RULE, train, "2")):
        got = job[rule]
        assert got["Partition"] == wanted["slurm_partition"], (rule, got)
        assert got["TimeLimit"] == _minutes(wanted["runtime"]), (rule, got)
        assert got["MinMemoryNode"] == f"{wanted['mem_mb']}M", (rule, got)
        assert got["NumCPUs"] == cpus, (rule, got)  # cpus_per_task = the rule's threads
    assert train["slurm_partition"] != defaults["slurm_partition"]  # the override is visible
    # the GPU type comes from the profile, the count from the rule (`gpu`; the plugin assumes 1 if unset)
    assert "gpu" not in job["preprocess_pose"].get("TresPerJob", "")
    gpus = _rule_resources(runs.slurm_output, TRAIN_RULE).get("gpu", "1")
    assert job[TRAIN_RULE]["TresPerJob"] == f"gres:gpu:{train['gpu_model']}:{gpus}", job[TRAIN_RULE]


def _rule_resources(output: str, rule: str) -> dict[str, str]:
    """The ``resources:`` line Snakemake printed for ``rule``'s job, as key -> value."""
    block = re.search(rf"^rule {rule}:\n(?:    .*\n)*?    resources: (.*)$", output, re.MULTILINE)
    assert block, f"no resources line for {rule}"
    return dict(item.split("=", 1) for item in block.group(1).split(", "))


def _minutes(runtime: int) -> str:
    hours, minutes = divmod(int(runtime), 60)
    days, hours = divmod(hours, 24)
    return (f"{days}-" if days else "") + f"{hours:02d}:{minutes:02d}:00"


def _deterministic_files(workdir: Path) -> dict[str, bytes]:
    """Demo data, caches, manifests and the trained checkpoints, by relative path.

    A checkpoint's meta.json is compared without ``git_commit``: another commit to the checkout
    between the two runs changes that provenance field and nothing the run computed. The live
    step log and TensorBoard events record wall-clock time and throughput, so they are left out.
    """
    roots = [workdir / "data", workdir / "results" / "cache", workdir / "results" / "posevae" / TRAIN_RUN]
    files = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if (p.is_file() and p.name not in (".snakemake_timestamp", LIVE_LOG)
                    and "resume" not in p.parts and TENSORBOARD not in p.parts):
                data = p.read_bytes()
                if p.name == "meta.json":
                    meta = json.loads(data)
                    meta.pop("git_commit", None)
                    data = json.dumps(meta, sort_keys=True).encode()
                files[str(p.relative_to(workdir))] = data
    return files


def test_outputs_equal_a_local_run(runs):
    """Demo data, caches, manifests and the CPU-trained checkpoints are byte-equal to a local run's."""
    via_slurm, local = _deterministic_files(runs.slurm), _deterministic_files(runs.local)
    steps = sorted(p.name for p in (runs.local / "results/posevae" / TRAIN_RUN / "checkpoints").iterdir()
                   if p.is_dir())
    assert steps == ["0", "10", "20"] and len(local) > 100  # 0: the random initialisation
    assert sorted(via_slurm) == sorted(local)
    assert [name for name in local if via_slurm[name] != local[name]] == []
