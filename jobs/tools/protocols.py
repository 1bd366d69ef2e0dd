"""The evaluation protocols, by the names every report line and JSON key uses (see ``metrics``)."""

PER_IMAGE = "per-image-hungarian"  # DiffSeg, DiffCut: one matching per image
DATASET = "dataset-hungarian"  # STEGO: segments clustered into C classes, one matching for the dataset
BY_NAME = "by-name"  # EmerDiff's Table 3: segments named by CLIP, matched to the classes of the same name
PROTOCOLS = (PER_IMAGE, DATASET, BY_NAME)
