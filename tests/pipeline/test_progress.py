"""The driver's one progress bar: images across shards, and an estimated total whose running sums
give what a full recomputation over every shard gives."""

import random

from pipeline.progress import ImageProgress
from pipeline.tasks import Progress


def recomputed_total(shards: int, latest: dict[str, Progress], finished: set[str], done: int) -> int | None:
    """The estimate of pipeline/progress.py's docstring, from scratch over every shard seen."""
    known = [p for p in latest.values() if p.shard_bytes]
    basis = [p for p in known if p.shard in finished] or known
    read = sum(p.shard_bytes if p.shard in finished else p.bytes_read for p in basis)
    if not basis or read == 0:
        return None
    per_byte = sum(p.images for p in basis) / read
    running = [p for p in known if p.shard not in finished]
    remaining = max(sum(p.shard_bytes * per_byte - p.images for p in running), 0)
    mean_size = sum(p.shard_bytes for p in known) / len(known)
    not_started = max(shards - len(latest), 0) * mean_size * per_byte
    return max(int(round(done + remaining + not_started)), done)


def test_running_sums_match_a_full_recomputation_through_retries_and_unknown_sizes():
    rng = random.Random(0)
    shards = 60
    progress = ImageProgress(shards)
    latest: dict[str, Progress] = {}
    finished: set[str] = set()
    attempts = {f"s{i}": 1 for i in range(shards)}
    checked = 0
    while len(finished) < shards:
        shard = rng.choice([s for s in attempts if s not in finished])
        size = None if shard.endswith("7") else 1000 + 100 * int(shard[1:])  # pipe: shards have no size
        previous = latest.get(shard)
        images = (previous.images if previous else 0) + rng.randint(1, 3)
        event = Progress(shard, attempts[shard], images, min(images * 300, size or images * 300), size)
        progress.update(event)
        latest[shard] = event
        expected = recomputed_total(shards, latest, finished, progress.bar.n)
        if expected is not None:
            assert progress.bar.total == expected
            checked += 1
        roll = rng.random()
        if roll < 0.1:  # the attempt failed: its images leave the count, the next attempt starts over
            progress.shard_abandoned(shard)
            del latest[shard]
            attempts[shard] += 1
        elif roll < 0.4:
            progress.shard_finished(shard)
            finished.add(shard)
    assert progress.bar.n == sum(p.images for p in latest.values())
    assert checked > 100
    progress.close()


def test_progress_counts_images_across_shards_and_estimates_the_total():
    progress = ImageProgress(shards=4)
    progress.update(Progress("a", 1, images=2, bytes_read=1000, shard_bytes=1000))
    assert progress.bar.n == 2 and progress.bar.total == 8  # 2 images per 1000 bytes, 4 shards
    progress.update(Progress("b", 1, images=3, bytes_read=900, shard_bytes=1000))
    progress.shard_abandoned("b")  # that attempt failed: its images leave the count
    assert progress.bar.n == 2
    progress.update(Progress("a", 1, images=4, bytes_read=1000, shard_bytes=1000))
    progress.shard_finished("a")
    progress.update(Progress("b", 2, images=1, bytes_read=500, shard_bytes=1000))
    assert progress.bar.n == 5 and progress.bar.total == 16  # 4 per shard, from the finished one
    progress.close()
