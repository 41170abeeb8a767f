"""CT preprocessing throughput: our path against a plain per-volume MONAI ``Compose`` (docs/design.md §8).

Target (docs/design.md §8, first row): volumes/s on 512 x 512 x >=100-slice DICOM series is at
least 1.5x that of a plain per-volume MONAI dictionary ``Compose`` of the same transforms,
with equal output.

What is measured
    * ours: ``strata.ct.preprocess.preprocess_study`` (header checks of the series, uint8
      mask stack, separable resampling on MONAI's target grid, region crops, resize; it
      also hashes the input files for the manifest row, which the baseline does not).
    * baseline: ``LoadImaged`` (PydicomReader on the series folder, NibabelReader for the
      ten region masks) -> ``EnsureChannelFirstd`` -> ``Orientationd("RAS")`` ->
      ``Spacingd`` (bilinear image, nearest masks, border padding; MONAI defaults otherwise)
      -> ``ScaleIntensityRanged`` -> the same ``region_crops`` helper as ours ->
      ``Resized`` (area image, nearest masks) -> channel repeat and dtype cast.

Both paths use the ``preprocess.ct`` section of ``config/full.yaml``, each in its own
long-lived subprocess with the same ``torch.set_num_threads``. Each does one untimed
warm-up volume, then ``--repeats`` timed passes over all studies; the volumes are
interleaved (ours, baseline, then baseline, ours, ...) and never overlap, so load from
other processes falls on both paths alike. Peak memory is each subprocess's ``VmHWM``
(its own high-water RSS since exec); ``ru_maxrss`` is printed too (Linux carries it over
from the parent, hence the small driver process). The first pass's outputs are compared
tensor by tensor: image and region images (max abs difference, fraction of voxels beyond
``--image-tol``), masks and region masks (fraction of differing voxels), presence flags
and affine. The script exits non-zero if they differ beyond tolerance or the ratio
ours/baseline of volumes/s is below ``--target``. The machine should be otherwise idle
(``--wait-idle``); the CPU time other processes used meanwhile is printed to show whether it was.

The synthetic studies (project demo phantom, 512 x 512 in-plane, ~0.7 x 0.7 x 2.5 mm,
ten NIfTI region masks each) are written once into ``--workdir`` and reused while the
generation parameters are unchanged.

Run (from the repository root)::

    .venv/bin/python bench/preprocess_ct.py [--studies 3 --slices 120]
    .venv/bin/python bench/preprocess_ct.py --stages   # also print a per-stage time split
    .venv/bin/python bench/preprocess_ct.py --wait-idle 600   # on a shared machine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    Resize,
    Resized,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    Spacingd,
)
from safetensors.torch import load_file, save_file

from strata.config import CTPreprocessConfig, from_dict
from strata.ct.regions import REGION_INDEX, REGIONS, mask_file_name

IMAGE = "image"
IN_PLANE = 512
NOISE_HU = 15.0
GENERATION_FORMAT = 1  # bump when the generated data changes, so old workdirs are regenerated
OUTPUT_KEYS = ("image", "masks", "region_images", "region_masks", "region_present", "affine")
PATHS = ("ours", "baseline")
OTHERS_WARN = 0.05  # warn when other processes took more than this share of the CPU during timing


@dataclass(frozen=True)
class BenchStudy:
    study_id: str
    files: list[Path]  # DICOM slices
    masks: dict[str, Path]  # region -> NIfTI mask


# --------------------------------------------------------------------------- config and data


def load_ct_config(path: Path) -> CTPreprocessConfig:
    """The ``preprocess.ct`` section only (the full loader also checks the real-data paths)."""
    raw = yaml.safe_load(path.read_text())
    return from_dict(CTPreprocessConfig, raw["preprocess"]["ct"], where=f"{path}:preprocess.ct")


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the written studies depend on (the demo writers' source included)."""
    import strata.ct.demo

    demo_source = hashlib.sha256(Path(strata.ct.demo.__file__).read_bytes()).hexdigest()
    return {"format": GENERATION_FORMAT, "studies": args.studies, "slices": args.slices, "seed": args.seed,
            "in_plane": IN_PLANE, "noise_hu": NOISE_HU, "demo_py_sha256": demo_source}


def default_workdir(args: argparse.Namespace) -> Path:
    return Path(tempfile.gettempdir()) / f"strata-bench-preprocess-ct-{args.studies}x{args.slices}-seed{args.seed}"


def study_ids(n: int) -> list[str]:
    return [f"bench{i:02d}" for i in range(n)]


def study_plan(seed: int, index: int) -> tuple[tuple[float, float, float], Any, np.random.Generator]:
    """Spacing (about 0.7 x 0.7 x 2.5 mm), findings and the phantom's generator of one study."""
    from strata.ct.demo_plan import DemoFindings

    rng = np.random.default_rng([seed, index])
    xy = round(float(rng.uniform(0.66, 0.76)), 3)
    z = round(float(rng.uniform(2.4, 2.6)), 3)
    findings = DemoFindings(nodule_mm=int(rng.choice([0, 8, 15, 25])),
                            nodule_side=str(rng.choice(["left", "right"])),
                            cardiomegaly=bool(rng.random() < 0.5),
                            effusion=str(rng.choice(["none", "left", "right"])))
    return (xy, xy, z), findings, rng


def write_study(workdir: Path, study_id: str, index: int, slices: int, seed: int) -> None:
    """One phantom as a DICOM series plus its ten NIfTI region masks (project demo writers)."""
    from strata.ct.demo import lps_affine, phantom, write_dicom_series, write_nifti
    from strata.ct.layout import dicom_slice_name

    shape = (IN_PLANE, IN_PLANE, slices)
    spacing, findings, rng = study_plan(seed, index)
    hu, masks = phantom(shape, spacing, findings, REGIONS, NOISE_HU, rng)
    write_dicom_series(hu, spacing, workdir / "dicom" / study_id, study_id, seed, dicom_slice_name)
    affine = lps_affine(shape, spacing)
    for region, mask in masks.items():
        write_nifti(mask, affine, workdir / "masks" / f"seg_{study_id}" / mask_file_name(region), np.uint8)


def prepare_data(workdir: Path, args: argparse.Namespace) -> None:
    """Write the studies unless ``workdir`` already holds them for the same parameters."""
    from tqdm import tqdm

    params = generation_params(args)
    marker = workdir / "params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"reusing studies in {workdir}")
        return
    for sub in ("dicom", "masks"):
        if (workdir / sub).exists():
            if not marker.exists():
                sys.exit(f"{workdir / sub} exists but {marker} does not; refusing to overwrite it")
            shutil.rmtree(workdir / sub)
    marker.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    for index, study_id in enumerate(tqdm(study_ids(args.studies), desc="writing phantom studies")):
        write_study(workdir, study_id, index, args.slices, args.seed)
    marker.write_text(json.dumps(params, indent=1))


def find_studies(workdir: Path, n: int) -> list[BenchStudy]:
    studies = []
    for study_id in study_ids(n):
        files = sorted((workdir / "dicom" / study_id).glob("*.dcm"))
        masks = {r: workdir / "masks" / f"seg_{study_id}" / mask_file_name(r) for r in REGIONS}
        studies.append(BenchStudy(study_id, files, masks))
    return studies


# --------------------------------------------------------------------------- the two paths


def run_ours(study: BenchStudy, cfg: CTPreprocessConfig) -> dict[str, torch.Tensor]:
    from strata.ct.preprocess import preprocess_study

    return preprocess_study(study.study_id, "dicom", study.files, study.masks, cfg).tensors


def intensity_background(cfg: CTPreprocessConfig) -> float:
    """Where ``outside_hu`` lands in intensity space (computed as our path does)."""
    (lo, hi), (out_lo, out_hi) = cfg.hu_window, cfg.out_range
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=out_lo, b_max=out_hi, clip=True)
    return float(scale(torch.tensor([cfg.outside_hu]))[0])


def stack_masks(data: dict[str, Any], mask_keys: list[str], shape: tuple[int, ...]) -> torch.Tensor:
    """``[10, *shape]`` uint8 in ``REGIONS`` order from one ``[1, *shape]`` float mask per key."""
    stacked = torch.zeros((len(REGIONS), *shape), dtype=torch.uint8)
    for key in mask_keys:
        if tuple(data[key].shape[1:]) != tuple(shape):
            raise RuntimeError(f"mask {key!r} has shape {tuple(data[key].shape[1:])}, image {tuple(shape)}")
        stacked[REGION_INDEX[key]] = data[key].as_tensor()[0] > 0.5
    return stacked


def baseline_crops(data: dict[str, Any], cfg: CTPreprocessConfig, mask_keys: list[str],
                   background: float) -> dict[str, Any]:
    """Region crops with the helper our path uses, on the stacked resampled masks."""
    from strata.ct.preprocess import region_crops

    image = data[IMAGE]
    present = np.array([1 if r in mask_keys else 0 for r in REGIONS], dtype=np.uint8)
    masks = MetaTensor(stack_masks(data, mask_keys, tuple(image.shape[1:])), affine=image.affine.clone())
    crops, crop_masks = region_crops(image, masks, present, cfg, background)
    return {**data, "region_images": crops, "region_masks": crop_masks, "region_present": torch.from_numpy(present)}


def baseline_finish(data: dict[str, Any], cfg: CTPreprocessConfig, mask_keys: list[str]) -> dict[str, torch.Tensor]:
    """Channel repeat and dtype cast; the same output keys as ``preprocess_study``."""
    dtype = getattr(torch, cfg.dtype)
    image = data[IMAGE]
    return {
        "image": image.as_tensor().expand(cfg.channels, -1, -1, -1).to(dtype).contiguous(),
        "masks": stack_masks(data, mask_keys, tuple(image.shape[1:])),
        "region_images": data["region_images"].expand(-1, cfg.channels, -1, -1, -1).to(dtype).contiguous(),
        "region_masks": data["region_masks"],
        "region_present": data["region_present"],
        "affine": torch.as_tensor(np.asarray(image.affine, dtype=np.float64)),
    }


def baseline_transforms(cfg: CTPreprocessConfig, mask_keys: list[str]) -> list[tuple[str, Callable]]:
    """The plain MONAI dictionary pipeline, as (stage name, transform) pairs."""
    keys = [IMAGE, *mask_keys]
    (lo, hi), (out_lo, out_hi) = cfg.hu_window, cfg.out_range
    return [
        ("load image (PydicomReader)", LoadImaged(IMAGE, reader=PydicomReader(), image_only=True)),
        ("load masks (NibabelReader)", LoadImaged(mask_keys, reader=NibabelReader(), image_only=True)),
        ("channel first", EnsureChannelFirstd(keys)),
        ("orientation RAS", Orientationd(keys, axcodes="RAS", labels=None)),
        ("spacing image (bilinear)", Spacingd(IMAGE, pixdim=cfg.spacing, mode="bilinear", padding_mode="border")),
        ("spacing masks (nearest)", Spacingd(mask_keys, pixdim=cfg.spacing, mode="nearest", padding_mode="border")),
        ("intensity window", ScaleIntensityRanged(IMAGE, a_min=lo, a_max=hi, b_min=out_lo, b_max=out_hi, clip=True)),
        ("region crops", partial(baseline_crops, cfg=cfg, mask_keys=mask_keys, background=intensity_background(cfg))),
        ("resize image (area)", Resized(IMAGE, spatial_size=cfg.shape, mode="area")),
        ("resize masks (nearest)", Resized(mask_keys, spatial_size=cfg.shape, mode="nearest")),
        ("channels + dtype", partial(baseline_finish, cfg=cfg, mask_keys=mask_keys)),
    ]


def baseline_input(study: BenchStudy) -> dict[str, str]:
    return {IMAGE: str(study.files[0].parent), **{r: str(p) for r, p in study.masks.items()}}


def make_baseline(cfg: CTPreprocessConfig, mask_keys: list[str]) -> Callable[[BenchStudy], dict[str, torch.Tensor]]:
    pipeline = Compose([t for _, t in baseline_transforms(cfg, mask_keys)])
    return lambda study: pipeline(baseline_input(study))


# --------------------------------------------------------------------------- workers (own subprocess each)


def peak_rss_bytes() -> dict[str, int]:
    """This process's peak RSS two ways, in bytes.

    ``VmHWM`` is the high-water mark of the current address space, which starts afresh
    at ``exec``; ``ru_maxrss`` is carried over from the parent across fork and exec, so
    it is only this process's own figure when the parent was smaller (the driver keeps
    itself small: data generation and comparison run before/after, phantoms in a child).
    """
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"vm_hwm": hwm * 1024, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def save_outputs(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: tensors[k].contiguous() for k in OUTPUT_KEYS}, str(path))


RESULT_PREFIX = "@@preprocess_ct "  # marks the worker's reply lines on its stdout


def reply(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def serve_worker(name: str, studies: list[BenchStudy], cfg: CTPreprocessConfig, out_dir: Path) -> None:
    """Run one path on request: stdin lines ``run <study index> <save 0|1>`` or ``quit``.

    Each ``run`` times one volume (wall and process CPU time), optionally saves its outputs
    (untimed, before replying so the other path never runs alongside) and replies one line.
    """
    fn = partial(run_ours, cfg=cfg) if name == "ours" else make_baseline(cfg, list(studies[0].masks))
    for line in sys.stdin:
        command = line.split()
        if command[0] == "quit":
            reply({"peak_rss": peak_rss_bytes(), "torch_threads": torch.get_num_threads()})
            return
        study = studies[int(command[1])]
        start, cpu_start = time.perf_counter(), time.process_time()
        tensors = fn(study)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        if command[2] == "1":
            save_outputs(tensors, out_dir / name / f"{study.study_id}.safetensors")
        del tensors
        reply({"seconds": seconds, "cpu_seconds": cpu_seconds, "request_cpu_seconds": time.process_time() - cpu_start})


class Laps:
    """Wall time between successive ``lap`` calls."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.rows.append((name, now - self.last))
        self.last = now


def ours_stages(study: BenchStudy, cfg: CTPreprocessConfig) -> list[tuple[str, float]]:
    """``preprocess_study`` step by step (same calls, timed separately)."""
    from strata.ct.load import load_masks, load_volume
    from strata.ct.preprocess import _channels, region_crops
    from strata.ct.resample import resample_to_spacing
    from strata.io.atomic import sha256_files

    laps = Laps()
    volume = load_volume("dicom", study.files, cfg)
    laps.lap("check headers + load + RAS image")
    mask_stack, present, _ = load_masks(study.masks, volume.image)
    laps.lap("load + RAS masks (uint8 stack)")
    hu = resample_to_spacing(volume.image, cfg.spacing, "bilinear")
    laps.lap("spacing image (separable)")
    masks = resample_to_spacing(mask_stack, cfg.spacing, "nearest")
    laps.lap("spacing masks (separable, uint8)")
    (lo, hi), (out_lo, out_hi) = cfg.hu_window, cfg.out_range
    intensity = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=out_lo, b_max=out_hi, clip=True)(hu)
    laps.lap("intensity window")
    region_crops(intensity, masks, present, cfg, intensity_background(cfg))
    laps.lap("region crops")
    _channels(Resize(cfg.shape, mode="area")(intensity).as_tensor(), cfg)
    (Resize(cfg.shape, mode="nearest")(masks.float()).as_tensor() > 0.5).to(torch.uint8)
    laps.lap("resize + channels/dtype")
    sha256_files(volume.files)
    sha256_files(list(study.masks.values()))
    laps.lap("sha256 of inputs (manifest row)")
    return laps.rows


def baseline_stages(study: BenchStudy, cfg: CTPreprocessConfig) -> list[tuple[str, float]]:
    """The baseline's transforms applied one by one, plus float32 ``Spacingd`` for reference."""
    mask_keys = list(study.masks)
    data: Any = baseline_input(study)
    laps = Laps()
    before_spacing = None
    for name, transform in baseline_transforms(cfg, mask_keys):
        if name.startswith("spacing image"):
            before_spacing = dict(data)
            laps.lap("(untimed bookkeeping)")
        data = transform(data)
        laps.lap(name)
    rows = [r for r in laps.rows if r[0] != "(untimed bookkeeping)"]
    assert before_spacing is not None
    for keys, mode, label in ((IMAGE, "bilinear", "image"), (mask_keys, "nearest", "masks")):
        start = time.perf_counter()
        Spacingd(keys, pixdim=cfg.spacing, mode=mode, padding_mode="border", dtype=np.float32)(before_spacing)
        rows.append((f"[reference, not in baseline] spacing {label} with dtype=float32",
                     time.perf_counter() - start))
    return rows


def worker_main(args: argparse.Namespace) -> None:
    warnings.simplefilter("ignore")  # reader/deprecation warnings, same for both paths
    if args.worker == "generate":
        prepare_data(args.workdir, args)
        Path(args.result).write_text(json.dumps({"peak_rss": peak_rss_bytes()}))
        return
    torch.set_num_threads(args.threads)
    cfg = load_ct_config(args.config)
    studies = find_studies(args.workdir, args.studies)
    if args.worker in PATHS:
        serve_worker(args.worker, studies, cfg, args.workdir / "outputs")
        return
    if args.worker == "stages-ours":
        run_ours(studies[0], cfg)  # warm-up: first-touch page faults would inflate the first stages
        stages = ours_stages(studies[0], cfg)
    else:
        make_baseline(cfg, list(studies[0].masks))(studies[0])
        stages = baseline_stages(studies[0], cfg)
    result = {"stages": stages, "peak_rss": peak_rss_bytes(), "torch_threads": torch.get_num_threads()}
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- driver


def worker_command(worker: str, args: argparse.Namespace, result: Path | None = None) -> list[str]:
    """This script re-run as ``--worker``, with the driver's data and thread settings."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
           "--workdir", str(args.workdir), "--studies", str(args.studies), "--slices", str(args.slices),
           "--seed", str(args.seed), "--threads", str(args.threads), "--config", str(args.config)]
    return cmd + (["--result", str(result)] if result is not None else [])


def spawn_worker(worker: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run a one-shot worker (generation, stage split); returns the JSON result it writes."""
    result = args.workdir / "results" / f"{worker}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    subprocess.run(worker_command(worker, args, result), check=True)
    return json.loads(result.read_text())


class PathWorker:
    """A long-lived subprocess running one path, one volume per request."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.proc = subprocess.Popen(worker_command(name, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        for out in self.proc.stdout:
            if out.startswith(RESULT_PREFIX):
                return json.loads(out[len(RESULT_PREFIX):])
            print(out, end="")  # anything else the libraries print
        raise RuntimeError(f"{self.name} worker exited with code {self.proc.wait()}")

    def close(self) -> dict[str, Any]:
        result = self.ask("quit")
        self.proc.wait()
        return result


def run_timing(args: argparse.Namespace, studies: list[BenchStudy]) -> dict[str, dict[str, Any]]:
    """Warm up both paths, then time them volume by volume, alternating which goes first.

    Both workers stay alive, so each path's peak RSS is its own, while interleaving makes
    load from other processes fall on both paths alike.
    """
    workers = {name: PathWorker(name, args) for name in PATHS}
    results: dict[str, dict[str, Any]] = {
        name: {"seconds": [], "cpu_seconds": [], "other_cpu_seconds": []} for name in PATHS}
    try:
        for name in PATHS:
            results[name]["warmup_s"] = workers[name].ask("run 0 0")["seconds"]
        step = 0
        for repeat in range(args.repeats):
            for index, study in enumerate(studies):
                for name in PATHS if step % 2 == 0 else PATHS[::-1]:
                    busy = busy_cpu_seconds()
                    r = workers[name].ask(f"run {index} {int(repeat == 0)}")
                    # CPU time used by anything but the worker (other processes, kernel threads; the
                    # waiting driver uses next to none) while this volume was processed and saved
                    r["other_cpu_seconds"] = max(busy_cpu_seconds() - busy - r["request_cpu_seconds"], 0.0)
                    for key in ("seconds", "cpu_seconds", "other_cpu_seconds"):
                        results[name][key].append(r[key])
                    print(f"  pass {repeat + 1}, {study.study_id}, {name:<8}: {r['seconds']:6.1f} s, "
                          f"other processes {r['other_cpu_seconds']:5.1f} CPU s", flush=True)
                step += 1
        for name in PATHS:
            results[name].update(workers[name].close())
    finally:
        for worker in workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
    return results


def busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine so far (all processes, kernel included), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_wait: float, window: float = 10.0, quiet_windows: int = 3) -> None:
    """Wait up to ``max_wait`` s until the machine's CPU use stays below ``OTHERS_WARN`` for a while."""
    deadline, quiet = time.monotonic() + max_wait, 0
    if max_wait > 0:
        print(f"waiting up to {max_wait:.0f} s for {quiet_windows * window:.0f} s of an idle machine ...", flush=True)
    while quiet < quiet_windows and time.monotonic() < deadline:
        busy = busy_cpu_seconds()
        time.sleep(window)
        share = (busy_cpu_seconds() - busy) / (window * os.cpu_count())
        quiet = quiet + 1 if share < OTHERS_WARN else 0


def compare_study(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], image_tol: float) -> dict[str, Any]:
    """Difference figures between our outputs ``a`` and the baseline's ``b`` for one study."""
    for key in OUTPUT_KEYS:
        if a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
            return {"error": f"{key}: ours {tuple(a[key].shape)} {a[key].dtype}, "
                             f"baseline {tuple(b[key].shape)} {b[key].dtype}"}

    def absdiff(key: str) -> torch.Tensor:
        return (a[key].double() - b[key].double()).abs()

    region_diff = absdiff("region_images")
    return {
        "image_max": float(absdiff("image").max()),
        "region_images_max": float(region_diff.max()),
        "region_images_frac": float((region_diff > image_tol).double().mean()),
        "masks_frac": float((a["masks"] != b["masks"]).double().mean()),
        "region_masks_frac": float((a["region_masks"] != b["region_masks"]).double().mean()),
        "present_equal": bool(torch.equal(a["region_present"], b["region_present"])),
        "affine_max": float(absdiff("affine").max()),
    }


def study_is_equal(d: dict[str, Any], image_tol: float, mask_tol: float) -> bool:
    return ("error" not in d and d["image_max"] <= image_tol and d["region_images_frac"] <= mask_tol
            and d["masks_frac"] <= mask_tol and d["region_masks_frac"] <= mask_tol
            and d["present_equal"] and d["affine_max"] <= 1e-6)


def compare_outputs(studies: list[BenchStudy], out_dir: Path, image_tol: float) -> dict[str, dict[str, Any]]:
    figures = {}
    for study in studies:
        a = load_file(str(out_dir / "ours" / f"{study.study_id}.safetensors"))
        b = load_file(str(out_dir / "baseline" / f"{study.study_id}.safetensors"))
        figures[study.study_id] = compare_study(a, b, image_tol)
    return figures


def volumes_per_s(result: dict[str, Any]) -> float:
    return len(result["seconds"]) / sum(result["seconds"])


def others_share(result: dict[str, Any]) -> float:
    """CPU time of other processes during a path's timed volumes, as a share of all cores' time."""
    return sum(result["other_cpu_seconds"]) / (sum(result["seconds"]) * os.cpu_count())


def gib(peak: dict[str, int]) -> str:
    """Peak RSS (VmHWM) in GiB."""
    return f"{peak['vm_hwm'] / 2**30:.2f} GiB"


def print_timing(results: dict[str, dict[str, Any]], n_studies: int) -> None:
    print(f"\n{'path':<10}{'volumes':>8}{'total s':>10}{'s/volume':>10}{'volumes/s':>11}{'warm-up s':>11}"
          f"{'cpu/wall':>10}{'others':>8}{'peak RSS':>12}{'ru_maxrss':>12}")
    for name in PATHS:
        r = results[name]
        print(f"{name:<10}{len(r['seconds']):>8}{sum(r['seconds']):>10.1f}{np.mean(r['seconds']):>10.2f}"
              f"{volumes_per_s(r):>11.3f}{r['warmup_s']:>11.1f}{sum(r['cpu_seconds']) / sum(r['seconds']):>10.2f}"
              f"{others_share(r):>7.0%} {gib(r['peak_rss']):>12}{r['peak_rss']['ru_maxrss'] / 2**30:>8.2f} GiB")
    print("(cpu/wall: the path's CPU time over wall time of its timed volumes; others: CPU time of all other "
          "processes meanwhile, as a share of the machine's capacity -- near 0 on an idle machine)")
    cpu_ratio = sum(results["baseline"]["cpu_seconds"]) / sum(results["ours"]["cpu_seconds"])
    print(f"ratio by CPU time (not the target metric): {cpu_ratio:.2f}x")
    if len(results["ours"]["seconds"]) > n_studies:  # several passes: also the least disturbed one per volume
        best = {name: n_studies / sum(np.reshape(r["seconds"], (-1, n_studies)).min(axis=0))
                for name, r in results.items()}
        print(f"fastest pass per volume (not the target metric): ours {best['ours']:.3g} vol/s, baseline "
              f"{best['baseline']:.3g} vol/s, ratio {best['ours'] / best['baseline']:.2f}x")
    busiest = max(others_share(r) for r in results.values())
    if busiest > OTHERS_WARN:
        print(f"WARNING: other processes used {busiest:.0%} of the machine's CPU during the timed volumes "
              "of one path, so the times (and the ratio) are not reliable")


def print_equality(figures: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'study':<9}{'image max|d|':>13}{'region_img max|d|':>18}{'  (frac>tol)':>12}{'masks frac':>12}"
          f"{'region_masks frac':>18}{'present':>9}{'affine max|d|':>14}")
    for study_id, d in figures.items():
        if "error" in d:
            print(f"{study_id:<9}  {d['error']}")
            continue
        print(f"{study_id:<9}{d['image_max']:>13.2e}{d['region_images_max']:>18.2e}{d['region_images_frac']:>12.2e}"
              f"{d['masks_frac']:>12.2e}{d['region_masks_frac']:>18.2e}{d['present_equal']!s:>9}"
              f"{d['affine_max']:>14.1e}")


def print_stages(args: argparse.Namespace) -> None:
    for worker in ("stages-baseline", "stages-ours"):
        result = spawn_worker(worker, args)
        rows = result["stages"]
        in_path = [s for n, s in rows if not n.startswith("[reference")]
        total = sum(in_path)
        print(f"\n{worker} (one volume, {study_ids(1)[0]}, after a warm-up volume; total {total:.1f} s, "
              f"peak RSS {gib(result['peak_rss'])})")
        for name, seconds in rows:
            share = "" if name.startswith("[reference") else f"{100 * seconds / total:6.1f} %"
            print(f"  {name:<58}{seconds:>8.2f} s {share}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=3, help="number of synthetic DICOM studies (default 3)")
    parser.add_argument("--slices", type=int, default=120, help="slices per study, 512x512 each (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic studies (default 0)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where studies are written and reused (default: a folder under the temp dir "
                             "named after studies/slices/seed)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over all studies (default 1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads for both paths (default: all usable cores)")
    parser.add_argument("--target", type=float, default=1.5, help="required ratio ours/baseline (default 1.5)")
    parser.add_argument("--image-tol", type=float, default=2e-3,
                        help="max abs difference of image voxels, out_range units (default 2e-3)")
    parser.add_argument("--mask-tol", type=float, default=1e-3,
                        help="max fraction of differing mask / region mask voxels, and of region-image voxels "
                             "differing by more than --image-tol (default 1e-3)")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "full.yaml",
                        help="config whose preprocess.ct section is used (default config/full.yaml)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="wait up to this many seconds for 30 s of an idle machine (CPU use below "
                             f"{OTHERS_WARN:.0%}) before timing (default 0: start at once)")
    parser.add_argument("--stages", action="store_true", help="also time the stages of each path on one volume")
    parser.add_argument("--keep-outputs", action="store_true", help="keep both paths' output tensors in the workdir")
    parser.add_argument("--worker", choices=[*PATHS, "stages-ours", "stages-baseline", "generate"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = default_workdir(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    cfg = load_ct_config(args.config)
    print(f"config {args.config}: spacing {cfg.spacing}, shape {cfg.shape}, region_shape {cfg.region_shape}, "
          f"channels {cfg.channels}, dtype {cfg.dtype}; threads {args.threads}")
    spawn_worker("generate", args)  # in a child, so the phantoms' memory never inflates this process
    studies = find_studies(args.workdir, args.studies)
    wait_for_idle(args.wait_idle)
    print(f"timing: one warm-up volume per path, then {args.repeats} x {len(studies)} volumes each, interleaved",
          flush=True)
    results = run_timing(args, studies)
    out_dir = args.workdir / "outputs"
    figures = compare_outputs(studies, out_dir, args.image_tol)
    if not args.keep_outputs:
        shutil.rmtree(out_dir)
    print_timing(results, len(studies))
    print_equality(figures)
    if args.stages:
        print_stages(args)
    ours, base = volumes_per_s(results["ours"]), volumes_per_s(results["baseline"])
    ratio = ours / base
    equal = all(study_is_equal(d, args.image_tol, args.mask_tol) for d in figures.values())
    ok = equal and ratio >= args.target
    print(f"\npreprocess_ct: ours {ours:.3g} vol/s, baseline {base:.3g} vol/s, ratio {ratio:.1f}x "
          f"(target {args.target:g}x), output {'equal' if equal else 'NOT EQUAL'} "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
