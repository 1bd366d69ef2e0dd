"""The result type: a label map at the image's own size plus per-segment statistics."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Segment:
    id: int
    area: int  # pixels at the original image size
    bbox: tuple[int, int, int, int]  # COCO order: x, y, width, height, at the original size
    score: float  # mean best-vs-runner-up margin of the difference maps, in [0, 1]; see Segmentation
    embedding: np.ndarray  # (C,) float32, mean query feature over the segment (spec step 12)
    clip_embedding: np.ndarray | None = None  # (D,) float32 unit MaskCLIP embedding, when computed (emerdiff.clip)


@dataclasses.dataclass(frozen=True, eq=False)
class Segmentation:
    """EmerDiff's output for one image.

    ``labels`` is H x W (the original size) with ids in 0..K-1; ids whose masks won no pixel are
    simply absent. ``lowres_labels`` is the h x w k-means map (or the caller's map for
    ``upsample``). Per-id arrays have K rows, zero for absent ids.

    ``score`` is a confidence per segment: for every pixel, the margin between the largest and the
    second-largest blurred difference map divided by the largest, averaged over the segment's
    pixels at the working resolution. 1 means no other mask moved those pixels at all; near 0
    means two masks competed for them.
    """

    labels: np.ndarray  # (H, W) int32
    lowres_labels: np.ndarray  # (h, w) int32
    embeddings: np.ndarray  # (K, C) float32
    area: np.ndarray  # (K,) int64
    bbox: np.ndarray  # (K, 4) int64, x, y, width, height
    score: np.ndarray  # (K,) float32
    clip_embeddings: np.ndarray | None = None  # (K, D) float32 from SegmentCLIP, zero for absent ids

    @property
    def num_masks(self) -> int:
        return int(self.area.shape[0])

    @property
    def segment_ids(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.area)]

    @property
    def num_segments(self) -> int:
        return int(np.count_nonzero(self.area))

    @property
    def segments(self) -> list[Segment]:
        return [
            Segment(
                id=i,
                area=int(self.area[i]),
                bbox=tuple(int(v) for v in self.bbox[i]),
                score=float(self.score[i]),
                embedding=self.embeddings[i],
                clip_embedding=None if self.clip_embeddings is None else self.clip_embeddings[i],
            )
            for i in self.segment_ids
        ]

    def with_clip_embeddings(self, clip_embeddings: np.ndarray) -> Segmentation:
        """This result with each segment's CLIP embedding, (K, D) as SegmentCLIP.segment_embeddings gives them."""
        if clip_embeddings.shape[0] != self.num_masks:
            raise ValueError(f"expected {self.num_masks} CLIP embeddings (one per mask id), got {clip_embeddings.shape[0]}")
        return dataclasses.replace(self, clip_embeddings=clip_embeddings)


def segment_statistics(labels: np.ndarray, num_masks: int) -> tuple[np.ndarray, np.ndarray]:
    """Area and COCO-order bbox of every id in 0..num_masks-1 of an (H, W) label map."""
    height, width = labels.shape
    area = np.bincount(labels.ravel(), minlength=num_masks)[:num_masks].astype(np.int64)
    # presence[k, r] is True when id k occurs in row r (and likewise for columns).
    rows = np.zeros((num_masks, height), dtype=bool)
    cols = np.zeros((num_masks, width), dtype=bool)
    rows[labels, np.arange(height)[:, None]] = True
    cols[labels, np.arange(width)[None, :]] = True
    bbox = np.zeros((num_masks, 4), dtype=np.int64)
    for k in np.flatnonzero(area):
        r = np.flatnonzero(rows[k])
        c = np.flatnonzero(cols[k])
        bbox[k] = (c[0], r[0], c[-1] - c[0] + 1, r[-1] - r[0] + 1)
    return area, bbox
