from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess_partition(params_json: str, raw: Input[Dataset], partition: int, partitions: int,
                         shards: Output[Dataset]) -> int:
    """Shards `partition`, `partition` + `partitions`, ... of each split (no index); returns the image count."""
    from chromify.config import params_from_json
    from chromify.stages import run_preprocess

    counts = run_preprocess(params_from_json(params_json), raw.path, shards.path,
                            partition=f"{partition}/{partitions}", write_index=False, progress=True)
    shards.metadata.update(counts)
    return counts["images"]


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def collect_shards(params_json: str, parts: Input[list[Dataset]], partitions: int, shards: Output[Dataset]) -> int:
    """Gather the partitions' shards into one dataset with a per-split index; returns the number of training samples."""
    import shutil
    from pathlib import Path

    from chromify import shards as lab_shards
    from chromify.config import params_from_json
    from chromify.errors import DataError

    size = params_from_json(params_json).preprocess.size
    if len(parts) != partitions:
        raise DataError(f"collect_shards: got {len(parts)} partition(s), expected {partitions}")
    # Partitions write disjoint file names (their tag is in each name), as they would into one shared folder:
    # merging is the union of their trees. Copied, not moved: a cached partition's artifact is reused by later
    # runs and must stay whole. Hidden names are an unfinished write's temp files.
    out, seen = Path(shards.path), set()
    for part in parts:
        root = Path(part.path)
        for src in sorted(root.rglob("*")):
            rel = src.relative_to(root)
            if not src.is_file() or any(name.startswith(".") for name in rel.parts):
                continue
            if rel in seen:
                raise DataError(f"{part.uri}/{rel}: written by two partitions")
            seen.add(rel)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / rel)
    indexes = lab_shards.write_index(out, size, partitions=partitions)
    if not indexes:
        raise DataError(f"{shards.uri}: a partition did not finish; the shard index was not written")
    counts = {f"{split}_count": index["count"] for split, index in indexes.items()}
    shards.metadata.update(counts)
    return counts["train_count"]
