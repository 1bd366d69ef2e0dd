"""The evaluation protocols, by the names every report line and JSON key uses (see ``metrics``)."""

PER_IMAGE = "per-image-hungarian"  # DiffSeg, DiffCut: one matching per image
DATASET = "dataset-hungarian"  # STEGO: segments clustered into C classes, one matching for the dataset
PROTOCOLS = (PER_IMAGE, DATASET)
