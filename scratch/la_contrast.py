import json, numpy as np, SimpleITK as sitk
root = "../shared/data/mri_leftatrium_la2018/"
sp = json.load(open("splits/mri_leftatrium_la2018.json"))
rep = {c["case"]: c.get("Left atrium cavity") for c in json.load(open("reports/v083/mri_leftatrium_la2018.json"))["cases"]}
rows = []
for part in ("train", "val"):
    for cid in sp[part]:
        im = sitk.GetArrayFromImage(sitk.ReadImage(root + f"images/{cid}.nii.gz")).astype(np.float32)
        lb = sitk.GetArrayFromImage(sitk.ReadImage(root + f"labels/{cid}.nii.gz"))
        z = (im - im.mean()) / im.std()
        # contrast of atrium vs a shell around it
        from scipy.ndimage import binary_dilation
        shell = binary_dilation(lb > 0, iterations=4) & (lb == 0)
        rows.append((part, cid, z[lb > 0].mean(), z[lb > 0].mean() - z[shell].mean(), rep.get(cid)))
rows.sort(key=lambda r: r[3])
for r in rows[:15]:
    print(r)
print("median atrium z", np.median([r[2] for r in rows]), "median contrast", np.median([r[3] for r in rows]))
