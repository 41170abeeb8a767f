"""`make install`: the CPU path stays the default; TORCH=cuda installs and checks a CUDA build.

Only ``make -n`` (print, do not run) against a scratch venv path: a real CUDA install
downloads gigabytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO

CUDA_INDEX = "https://download.pytorch.org/whl/cu128"


def make_n(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), "-n", "install", f"VENV={venv}", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def stamp(venv: Path, mode: str) -> None:
    venv.mkdir(parents=True, exist_ok=True)
    (venv / ".strata-installed").write_text(f"torch={mode}\n")


def test_default_install_is_the_cpu_wheel_with_the_nvidia_check(tmp_path):
    out = make_n(tmp_path / "venv").stdout
    assert "pip install --quiet torch==2.13.0\n" in out and "--index-url" not in out
    assert "grep -i '^nvidia-'" in out and "torch.version.cuda or" not in out
    assert "echo torch=cpu >" in out


def test_torch_cuda_installs_a_cuda_build_and_checks_it(tmp_path):
    out = make_n(tmp_path / "venv", "TORCH=cuda", f"TORCH_INDEX_URL={CUDA_INDEX}").stdout
    assert f"pip install --quiet torch==2.13.0 --index-url {CUDA_INDEX}" in out
    assert "torch.version.cuda or sys.exit" in out and "grep -i '^nvidia-'" not in out
    assert "expected 2.13.0" in out and "echo torch=cuda >" in out


def test_the_stamp_records_the_mode_and_a_switch_reinstalls(tmp_path):
    venv = tmp_path / "venv"
    stamp(venv, "cpu")
    assert "Nothing to be done" in make_n(venv).stdout
    assert "echo torch=cuda >" in make_n(venv, "TORCH=cuda").stdout
    stamp(venv, "cuda")
    assert "Nothing to be done" in make_n(venv).stdout  # a plain `make` keeps the installed mode
    out = make_n(venv, "TORCH=cpu").stdout
    assert "replacing the installed torch build" in out and "echo torch=cpu >" in out


def test_an_unknown_torch_mode_is_refused():
    proc = make_n(Path("/nonexistent"), "TORCH=gpu")
    assert proc.returncode != 0 and "TORCH must be cpu or cuda, got 'gpu'" in proc.stderr


def make_verdict(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "verdict", f"VERDICT={path}"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_make_verdict_exits_non_zero_on_a_fail_and_zero_on_a_pass(tmp_path):
    verdict = tmp_path / "verdict.md"
    verdict.write_text("# Verdict: FAIL (8 of 29 targets met)\n\n## hjepa / pose\n- **FAIL** beats PCA: 0.19 vs 0.25\n")
    failed = make_verdict(verdict)
    assert failed.returncode != 0
    assert "beats PCA: 0.19 vs 0.25" in failed.stdout and "missed a learning target" in failed.stderr
    verdict.write_text("# Verdict: PASS (29 of 29 targets met)\n")
    assert make_verdict(verdict).returncode == 0
