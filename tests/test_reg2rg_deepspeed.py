"""Reg2RG training through DeepSpeed ZeRO-2 on the CPU (gloo), one and two processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_reg2rg_support import REPO, raw_demo_section

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.slow  # first use JIT-compiles DeepSpeed's shm_comm (~35 s); each run starts 1-2 interpreters
@pytest.mark.parametrize("nproc", [1, 2])
def test_zero2_trains_on_cpu_with_torchrun(tmp_path, fake_cache, nproc):
    section = raw_demo_section()
    section["train"].update(epochs=1, grad_accum=1, warmup_steps=1, repeats=1)
    section["deepspeed"] = str(REPO / "config" / "deepspeed" / "zero2.json")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"seed": 1234, "reg2rg": section}))
    assert "optimizer" not in json.loads((REPO / "config" / "deepspeed" / "zero2.json").read_text())
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [TORCHRUN, f"--nproc_per_node={nproc}", "--master_port", str(29500 + nproc), "-m", "strata.reg2rg",
           "--config", str(config), "--tokenizer", str(fake_cache["root"] / "tokenizer"),
           "--reports", str(fake_cache["reports"]), "--tokens", str(fake_cache["tokens"]), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "DeepSpeed" in proc.stdout + proc.stderr or "deepspeed" in proc.stdout + proc.stderr
    losses = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{\"losses\"")))["losses"]
    steps = math.ceil(len(fake_cache["ids"]) / nproc)
    assert len(losses) == steps and all(math.isfinite(x) for x in losses)
    weights = load_file(str(out / "checkpoints" / "1" / "model.safetensors"))
    assert any(k.startswith("lm.") and "lora_B" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it moved
    shutil.rmtree(out, ignore_errors=True)
