"""An anchor for segment times: nnU-Net v2's own predictor on the same image and CPU threads as ours.

nnU-Net lives in a separate virtual environment (its dependencies are not ours)::

    python3 -m venv cache/venv-nnunet
    cache/venv-nnunet/bin/pip install -r benchmarks/requirements-nnunet.txt   # torch 2.13.0 CPU, nnunetv2 2.8.1
    .venv/bin/python benchmarks/anchor_nnunet.py [--threads 1] [--repeats 3] [--size 96]

No trained nnU-Net weights can be downloaded here, so nnU-Net runs its standard 3d_fullres network for
MSD Task04 Hippocampus (PlainConvUNet, 4 stages of 32..256 features, patch 40 x 56 x 40 at 1 mm, the
layout its planner gives that dataset) with random weights: the time is what matters, the labels do
not. ``nnUNetPredictor.predict_single_npy_array`` is timed end to end (preprocessing, sliding window,
resampling back), one fold, with and without its default mirroring (8 flips); a trained nnU-Net
predicts with 5 folds, so 5x that. Ours: ``api.segment`` of the bundled model, ``--group Hippocampus``,
with and without its mirror. The first call of each is a warm-up; the best of ``--repeats`` is printed.
The image is ``samples/hippo_sample.nii.gz`` (34 x 52 x 35), padded with background to ``--size``
voxels a side if given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"
NNUNET_PYTHON = REPO / "cache" / "venv-nnunet" / "bin" / "python"

STAGES = 4
PLANS = {
    "dataset_name": "Dataset004_Hippocampus", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
    "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [36, 50, 35],
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "percentile_00_5": 0.0,
                                                     "percentile_99_5": 1.0}},  # unused by ZScore
    "configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 9,
        "patch_size": [40, 56, 40], "median_image_size_in_voxels": [36, 50, 35], "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": STAGES, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * STAGES, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (STAGES - 1),
                "n_conv_per_stage": [2] * STAGES, "n_conv_per_stage_decoder": [2] * (STAGES - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}},
}
DATASET = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
           "numTraining": 260, "file_ending": ".nii.gz"}


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_nnunet(image_path: str, threads: int, repeats: int) -> dict:
    """In nnU-Net's venv: time its predictor on ``image_path``; returns seconds with and without mirroring."""
    import os

    os.environ.setdefault("nnUNet_def_n_proc", str(threads))
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plans = PlansManager(PLANS)
    config = plans.get_configuration("3d_fullres")
    arch = PLANS["configurations"]["3d_fullres"]["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, len(DATASET["labels"]), deep_supervision=False).eval()
    image = sitk.ReadImage(image_path)
    array = sitk.GetArrayFromImage(image)[None].astype("float32")
    props = {"spacing": list(image.GetSpacing())[::-1]}
    out = {"torch": torch.__version__, "patch_size": config.patch_size, "shape": list(array.shape[1:])}
    for mirror in (False, True):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.manual_initialization(network, plans, config, [network.state_dict()], DATASET,
                                        "nnUNetTrainer", (0, 1, 2))
        out["mirror" if mirror else "plain"] = best_of(lambda p=predictor: p.predict_single_npy_array(array, props),
                                                       repeats)
    return out


def run_ours(image_path: str, threads: int, repeats: int) -> dict:
    from UniversalSegLib.api import InferenceOptions, segment

    out = {}
    for mirror in (False, True):
        options = InferenceOptions(mirror=mirror)
        out["mirror" if mirror else "plain"] = best_of(
            lambda o=options: segment(image_path, groups=["Hippocampus"], modality="MR-T1", threads=threads,
                                      options=o), repeats)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, help="pad the sample with background to this many voxels a side")
    parser.add_argument("--nnunet-python", type=Path, default=NNUNET_PYTHON, help="python of nnU-Net's venv")
    parser.add_argument("--inner", metavar="IMAGE", help=argparse.SUPPRESS)  # run inside nnU-Net's venv
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(run_nnunet(args.inner, args.threads, args.repeats)))
        return 0
    if not args.nnunet_python.is_file():
        sys.exit(f"no nnU-Net venv at {args.nnunet_python}: see this script's docstring")
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        image_path = str(SAMPLE)
        if args.size:
            image = sitk.ReadImage(image_path)
            low = [(args.size - n) // 2 for n in image.GetSize()]
            high = [args.size - n - lo for n, lo in zip(image.GetSize(), low, strict=True)]
            image_path = str(Path(tmp) / "padded.nii.gz")
            sitk.WriteImage(sitk.ConstantPad(image, low, high, float(sitk.GetArrayViewFromImage(image).min())),
                            image_path)
        done = subprocess.run([str(args.nnunet_python), __file__, "--inner", image_path, "--threads",
                               str(args.threads), "--repeats", str(args.repeats)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"nnU-Net run failed:\n{done.stderr}")
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        ours = run_ours(image_path, args.threads, args.repeats)
    print(f"image {theirs['shape']} (z, y, x), {args.threads} thread(s), best of {args.repeats}, seconds per case")
    print("| predictor | plain | mirrored |")
    print("|---|---|---|")
    print(f"| nnU-Net v2 3d_fullres, 1 fold (patch {theirs['patch_size']}, random weights) | {theirs['plain']:.2f} | "
          f"{theirs['mirror']:.2f} (8 flips) |")
    print(f"| nnU-Net v2, 5 folds (x5) | {5 * theirs['plain']:.2f} | {5 * theirs['mirror']:.2f} |")
    print(f"| UniversalSeg bundled model, --group Hippocampus | {ours['plain']:.2f} | {ours['mirror']:.2f} "
          "(left-right) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
