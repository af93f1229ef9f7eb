"""Scratch: evaluate with the input mirrored along one array axis (label flipped back)."""
import json, sys
import numpy as np, SimpleITK as sitk
from UniversalSegLib.api import segment
from UniversalSegLib.training.evaluate import evaluate_dataset
import torch
torch.set_num_threads(2)
axis = int(sys.argv[2])  # numpy axis of (z, y, x)

def flipped(image, **kw):
    img = sitk.ReadImage(str(image)) if not isinstance(image, sitk.Image) else image
    arr = np.flip(sitk.GetArrayFromImage(img), axis=axis).copy()
    f = sitk.GetImageFromArray(arr); f.CopyInformation(img)
    res = segment(f, **kw)
    lab = np.flip(sitk.GetArrayFromImage(res.labels), axis=axis).copy()
    out = sitk.GetImageFromArray(lab); out.CopyInformation(res.labels)
    res.labels = out
    return res

rep = evaluate_dataset(sys.argv[1], split="val", segment_fn=flipped)
json.dump(rep, open(sys.argv[3], "w"), indent=1)
print(rep["mean_dice"], {k: round(v["dice"], 3) for k, v in rep["labels"].items()})
