"""What a user would write instead of `tsm label`: the two baselines of bench_vs_baselines.py.

    .venv/bin/python bench/baselines.py plain MANIFEST --model DIR --output OUT.parquet
    .venv/bin/python bench/baselines.py ray   MANIFEST --model DIR --output OUT_DIR

1. `plain_loop`: one process, one video after another. decord opens each video
   with one thread, `get_batch` fetches the TSN segment centres, torch resizes
   the shorter side and cuts the centre crop, and every `batch_size` clips go
   through the model with `threads` intra-op threads. The rows are kept in
   memory and written to one Parquet file at the end.
2. `ray_data_job`: the Ray Data job from the documentation's batch-inference
   pattern: `from_items` -> `map(decode)` (one video per call, uint8 clip out)
   -> `map_batches(ModelActor, ActorPoolStrategy(size=2))` -> `write_parquet`,
   on a local Ray with `num_cpus` CPUs. Ray Data fuses the `map` into the
   actors (its log names the actor `MapWorker(Map(decode_row)->MapBatches(
   ModelActor))`): each of the 2 actors (1 CPU each) decodes and labels its
   own videos, and no clip travels between processes.

Both compute what `tsm label` computes per video: the same frame indices
(`pipeline.sampling.segment_indices`), the same resize, crop and normalisation
(the model config's sizes, mean and std), one backbone pass per clip giving the
top-5 classes (softmax of the segment-averaged logits) and the embedding
(segment-averaged features). What they leave out is what the job adds around
that: error rows instead of crashes, crash and hang isolation of the decoder,
resume, listing of S3 and folders, part files, MLflow. They use the project's
`tsm_model.load` and `segment_indices` only, the stable public pieces.

Each run prints one JSON line on stdout: rows written and the seconds spent
inside the function (the benchmark times the whole process from outside).

TRAP: torch is imported before decord in every process that uses both
(decord first, then a matmul, segfaults).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# torch at import time, so it is always in before decord (imported inside the functions):
# see TRAP above. Ray workers unpickling these functions import torch first the same way.
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages are one folder up
    sys.path.insert(0, str(ROOT))

TOP_K = 5


def read_manifest(path: str | Path) -> list[str]:
    """The `uri` column of a manifest CSV (what `tsm label` reads too)."""
    import csv

    with open(path, newline="") as f:
        return [row["uri"] for row in csv.DictReader(f) if row.get("uri")]


# ----------------------------------------------------------------- the per-video work
def decode_clip(uri: str, num_segments: int, resize_size: int, crop_size: int):
    """`(T, 3, crop, crop)` uint8 clip of the TSN segment centres of one video."""
    import decord
    from torchvision.transforms.v2 import functional as F

    from pipeline.sampling import segment_indices

    vr = decord.VideoReader(uri, num_threads=1)
    indices = segment_indices(len(vr), num_segments, train=False)
    frames = vr.get_batch(indices.tolist()).asnumpy()  # (T, H, W, 3) uint8
    del vr
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
    clip = F.resize(clip, [resize_size], antialias=True)  # shorter side
    clip = F.center_crop(clip, [crop_size, crop_size])
    return clip.contiguous()


def label_clips(model, clips):
    """uint8 `(B, T, 3, S, S)` tensor -> top-k ids, top-k scores, embeddings (numpy).

    One backbone pass for both outputs, as `tsm label` does: the per-frame
    features give the embedding (mean over segments) and, through the
    classifier, the logits (mean over segments, then softmax).
    """
    cfg = model.config
    mean = torch.tensor(cfg.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 1, 3, 1, 1)
    with torch.inference_mode():
        x = (clips.float() / 255.0 - mean) / std
        feats = model.frame_features(x)  # (B, T, D)
        probs = torch.softmax(model.new_fc(feats).mean(dim=1), dim=1)
        scores, ids = probs.topk(min(TOP_K, cfg.num_classes), dim=1)
        emb = feats.mean(dim=1)
    return ids.numpy().astype("int32"), scores.numpy(), emb.numpy()


# ----------------------------------------------------------------- 1. the plain loop
def plain_loop(uris: list[str], model_dir: str | Path, output: str | Path, *,
               batch_size: int = 8, threads: int = 2) -> dict:
    """Label `uris` in this process; write one Parquet file `output`. Returns a summary."""
    started = time.monotonic()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import tsm_model

    torch.set_num_threads(threads)
    model = tsm_model.load(model_dir)
    cfg = model.config
    names = np.array(cfg.class_names, dtype=object)
    out = {"uri": [], "ids": [], "scores": [], "emb": []}

    def flush(batch_uris, clips):
        ids, scores, emb = label_clips(model, torch.stack(clips))
        out["uri"] += batch_uris
        out["ids"].append(ids)
        out["scores"].append(scores)
        out["emb"].append(emb)

    batch_uris, clips = [], []
    for uri in uris:
        clips.append(decode_clip(uri, cfg.num_segments, cfg.resize_size, cfg.input_size))
        batch_uris.append(uri)
        if len(clips) == batch_size:
            flush(batch_uris, clips)
            batch_uris, clips = [], []
    if clips:
        flush(batch_uris, clips)

    ids, scores, emb = (np.concatenate(out[k]) for k in ("ids", "scores", "emb"))
    table = pa.table({
        "uri": pa.array(out["uri"], pa.string()),
        "top5_labels": pa.array(names[ids].tolist(), pa.list_(pa.string())),
        "top5_ids": pa.array(list(ids), pa.list_(pa.int32())),
        "top5_scores": pa.array(list(scores), pa.list_(pa.float32())),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
    })
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output)
    return {"method": "plain", "rows": table.num_rows, "seconds": time.monotonic() - started}


# ----------------------------------------------------------------- 2. the Ray Data job
def decode_row(row: dict, num_segments: int, resize_size: int, crop_size: int) -> dict:
    """Ray Data `map` function: one video in, its uint8 clip out."""
    clip = decode_clip(row["uri"], num_segments, resize_size, crop_size)
    return {"uri": row["uri"], "clip": clip.numpy()}


class ModelActor:
    """Ray Data callable class: loads the model once per actor, labels batches of clips."""

    def __init__(self, model_dir: str, threads: int = 1):
        import tsm_model

        # the actors share the cores with the decode tasks: one thread each
        torch.set_num_threads(threads)
        self.model = tsm_model.load(model_dir)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        ids, scores, emb = label_clips(self.model, torch.from_numpy(batch["clip"]))
        names = np.array(self.model.config.class_names, dtype=object)
        return {
            "uri": batch["uri"],
            # one "a|b|c" string per row: Ray Data stores 2-D string arrays as pickled objects
            "top5_labels": np.array(["|".join(r) for r in names[ids]], dtype=object),
            "top5_ids": ids,
            "top5_scores": scores,
            "embedding": emb,
        }


def ray_data_job(uris: list[str], model_dir: str | Path, output: str | Path, *,
                 num_cpus: int = 2, actors: int = 2, batch_size: int = 8,
                 threads_per_actor: int = 1) -> dict:
    """Label `uris` with a local Ray Data job; Parquet files into folder `output`."""
    started = time.monotonic()
    import ray
    import ray.cloudpickle
    import ray.data

    import tsm_model

    # workers import this module by name unless it travels by value (bench/ is no package)
    if __name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = tsm_model.load_config(model_dir)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ds = ray.data.from_items([{"uri": u} for u in uris])
        ds = ds.map(decode_row, fn_kwargs={"num_segments": cfg.num_segments,
                                           "resize_size": cfg.resize_size,
                                           "crop_size": cfg.input_size})
        ds = ds.map_batches(ModelActor, fn_constructor_kwargs={
                                "model_dir": str(model_dir), "threads": threads_per_actor},
                            batch_size=batch_size,
                            compute=ray.data.ActorPoolStrategy(size=actors))
        ds.write_parquet(str(output))
    finally:
        ray.shutdown()
    rows = count_rows(output)
    return {"method": "ray", "rows": rows, "seconds": time.monotonic() - started}


def count_rows(path: str | Path) -> int:
    """Rows in a Parquet file, or in the Parquet files of a folder (from the footers)."""
    import pyarrow.parquet as pq

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=["plain", "ray"])
    parser.add_argument("manifest", type=Path, help="CSV with a uri column")
    parser.add_argument("--model", required=True, help="a saved model folder")
    parser.add_argument("--output", required=True,
                        help="plain: the Parquet file; ray: the folder of Parquet files")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2,
                        help="plain: torch threads; ray: the local Ray's CPUs")
    parser.add_argument("--actors", type=int, default=2, help="ray: model actors")
    args = parser.parse_args()
    uris = read_manifest(args.manifest)
    if args.method == "plain":
        result = plain_loop(uris, args.model, args.output, batch_size=args.batch_size,
                            threads=args.cpus)
    else:
        result = ray_data_job(uris, args.model, args.output, num_cpus=args.cpus,
                              actors=args.actors, batch_size=args.batch_size)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
