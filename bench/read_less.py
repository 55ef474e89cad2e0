"""Read less: what `tsm label` reads and decodes of long videos on a real local S3 server.

    # one 5-minute 720p upload-like video (2-s GOP, B-frames), keyframe and uniform sampling
    .venv/bin/python bench/read_less.py

    # more videos, another length, the results file where you want it
    .venv/bin/python bench/read_less.py --count 2 --duration 300 --json /tmp/read-less.json

The issue's target (issue 10): a 5-minute 720p video with 2-s GOPs labelled
with `--sampling keyframe` decodes at most 1.5 frames per frame used and
reads at most 15 % of the object's bytes, on a real S3 server.

What it does, in one process:

1. makes (or reuses) the videos with `bench/upload_corpus.py` (H.264 at 25
   fps, B-frames, a keyframe every `--gop` frames, `+faststart`: the index at
   the front, as uploads from phones and web tools usually have it);
2. starts moto's S3 server on a free loopback port (as `tests/conftest.py`
   does: a real HTTP endpoint, boto3 talks to it as to S3), with the standard
   AWS variables pointing at it, and uploads the videos into a bucket;
3. runs the real label job (`pipeline.job.run_label`, default settings: the
   bundled model, objects over `whole_read_mb` read with ranged GETs) over
   `s3://bucket/videos/` once per sampling, each into its own output;
4. reads each output's rows: `frames_decoded` per frame used (the
   `frame_indices`), `bytes_read` as a share of the object's size,
   `decode_cpu_s` (the decoding child's CPU time: fetch + decode) and the
   number of GET requests the server answered for the videos (counted at
   the server; with default flags the job also decodes two of its first
   videos in the driver to balance its stages, `pipeline/balance.py`, so with
   one or two videos each is fetched twice and the count is twice a decode's).

The figures are counts, not timings, so they do not depend on how busy the
machine is (decode_cpu_s does, a little).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from upload_corpus import DEFAULT_CACHE, make_corpus, read_manifest  # noqa: E402

AWS_ENV = {  # moto accepts any credentials; these never leave the loopback server
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
SAMPLINGS = ("keyframe", "uniform")
TARGET_FRAMES_PER_USED = 1.5
TARGET_BYTES_SHARE = 0.15


def start_s3() -> tuple[object, str, list]:
    """moto's S3 server on 127.0.0.1 (a free port); returns (server, endpoint, GET log).

    The GET log gets one (key, Range header) per GET the server answers, so the
    requests the job made can be counted."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    gets: list[tuple[str, str | None]] = []
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    wsgi = server._server  # werkzeug's server: count the GETs on their way to moto's app
    inner = wsgi.app

    def counting(environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET" and "/videos/" in environ.get("PATH_INFO", ""):
            gets.append((environ["PATH_INFO"], environ.get("HTTP_RANGE")))
        return inner(environ, start_response)

    wsgi.app = counting
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": endpoint})
    return server, endpoint, gets


def rows_of(output: str) -> list[dict]:
    import pyarrow.dataset as ds

    cols = ["video_uri", "status", "error_kind", "error_message", "sampling", "num_frames",
            "width", "height", "fps", "duration_s", "frame_indices", "frames_decoded",
            "bytes_read", "decode_cpu_s"]
    return ds.dataset(output, format="parquet").to_table(columns=cols).to_pylist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1, help="videos (default %(default)s)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds per video")
    p.add_argument("--size", default="1280x720", help="WxH (default %(default)s)")
    p.add_argument("--gop", type=int, default=50, help="frames between keyframes (25 fps)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where videos are kept")
    p.add_argument("--model", default=str(ROOT / "tsm_model" / "bundled"),
                   help="model folder or URI (default: the bundled model)")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = p.parse_args()
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    manifest = make_corpus(args.count, args.duration, sizes=[args.size], gop=args.gop,
                           cache=args.cache, jobs=1)
    paths = [Path(u) for u in read_manifest(manifest)]
    work = Path(tempfile.mkdtemp(prefix="read-less-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"

    server, endpoint, gets = start_s3()  # before Ray starts: its workers inherit the variables
    import ray

    from pipeline.job import run_label
    from pipeline.settings import LabelConfig
    from pipeline.store.s3 import s3_client

    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    results = {}
    try:
        s3_client.cache_clear()
        bucket = f"read-less-{uuid.uuid4().hex[:8]}"
        s3_client().create_bucket(Bucket=bucket)
        sizes = {}
        for path in paths:
            s3_client().upload_file(str(path), bucket, f"videos/{path.name}")
            sizes[f"s3://{bucket}/videos/{path.name}"] = path.stat().st_size
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        for sampling in SAMPLINGS:
            gets.clear()
            out = str(work / f"out-{sampling}")
            config = LabelConfig(input=f"s3://{bucket}/videos/", output=out, model=args.model,
                                 sampling=sampling, embeddings=False)
            summary = run_label(config)
            rows = rows_of(out)
            bad = [r for r in rows if r["status"] != "ok"]
            if bad or len(rows) != len(paths):
                raise SystemExit(f"error: {len(rows)} rows, {len(bad)} not ok: {bad[:1]}")
            per_video = []
            for r in rows:
                used = len(r["frame_indices"])
                size = sizes[r["video_uri"]]
                per_video.append({
                    "video": r["video_uri"], "object_bytes": size,
                    "size": f"{r['width']}x{r['height']}", "num_frames": r["num_frames"],
                    "duration_s": r["duration_s"], "frames_used": used,
                    "frame_indices": r["frame_indices"],
                    "frames_decoded": r["frames_decoded"],
                    "frames_decoded_per_used": r["frames_decoded"] / used,
                    "bytes_read": r["bytes_read"], "bytes_share": r["bytes_read"] / size,
                    "decode_cpu_s": r["decode_cpu_s"],
                })
            results[sampling] = {
                "videos": per_video,
                "get_requests": len(gets),
                "ranged_gets": sum(1 for _, rng in gets if rng),
                # every GET of the videos, the driver's too: unless --actors (or another
                # share flag) is given, the job decodes two of the first videos in the driver
                # to balance its stages (pipeline/balance.py), so those are fetched twice
                "gets": [rng for _, rng in gets],
                "mlflow_metrics": {k: v for k, v in summary.metrics().items()
                                   if k in ("frames_decoded_per_used", "bytes_read_per_video",
                                            "decode_cpu_s_per_video")},
                "wall_time_s": round(summary.wall_time_s, 1),
            }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        server.stop()

    lines = [
        f"{len(paths)} video(s) of {args.duration:g} s, {args.size}, 25 fps, GOP {args.gop} "
        f"frames, B-frames, on moto's S3 server ({endpoint}); model {args.model}; default "
        "label settings otherwise",
        "",
        "| sampling | video | object MB | frames decoded / used | bytes read | share of object "
        "| GETs (ranged) | decode CPU s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sampling, res in results.items():
        for v in res["videos"]:
            lines.append(
                f"| {sampling} | {Path(v['video']).name} | {v['object_bytes'] / 1e6:.1f} | "
                f"{v['frames_decoded']} / {v['frames_used']} = "
                f"**{v['frames_decoded_per_used']:.2f}** | {v['bytes_read']:,} | "
                f"**{100 * v['bytes_share']:.2f} %** | {res['get_requests']} "
                f"({res['ranged_gets']}) | {v['decode_cpu_s']:.2f} |")
    kf = results["keyframe"]["videos"]
    worst_frames = max(v["frames_decoded_per_used"] for v in kf)
    worst_share = max(v["bytes_share"] for v in kf)
    lines += [
        "",
        f"- keyframe target <= {TARGET_FRAMES_PER_USED} frames decoded per frame used: "
        f"{'met' if worst_frames <= TARGET_FRAMES_PER_USED else 'MISSED'} ({worst_frames:.2f})",
        f"- keyframe target <= {100 * TARGET_BYTES_SHARE:.0f} % of the object read: "
        f"{'met' if worst_share <= TARGET_BYTES_SHARE else 'MISSED'} "
        f"({100 * worst_share:.2f} %)",
        f"- started {started}; command: `{command}`",
    ]
    md = "\n".join(lines)
    print(md)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "started": started,
                                         "results": results, "markdown": md}, indent=2))


if __name__ == "__main__":
    main()
