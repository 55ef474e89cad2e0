"""How a run shares its CPUs between decode tasks and model actors, from what each costs.

A decode task takes one CPU for as long as a video takes to fetch and decode;
a model actor takes what its torch threads use. Which stage needs more
depends on the videos (a 720p upload costs several times a 272p one) and on
the model (ResNet-50 at 224 px costs ~15 times MobileNetV2 at 112 px): a
fixed split starves one stage whenever the other is cheap. So, unless the
flags say otherwise, the job decodes two of its first videos and runs the
model on a batch in the driver before it starts (`measure`), and gives each
stage CPUs in proportion to its cost (`share`).

On GPU nodes the model runs on the GPU: each actor keeps one CPU to feed it,
and every other CPU decodes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

THREADS_PER_ACTOR = 4  # torch's intra-op threads scale well up to about this, on CPU


@dataclass(frozen=True)
class Costs:
    """CPU seconds per video: to fetch, decode and crop; to run the model on one clip."""

    decode_s: float
    model_s: float


@dataclass(frozen=True)
class Shares:
    """What the model stage gets; the decode tasks get every other CPU."""

    actors: int
    cpus_per_actor: float  # reserved from Ray, so decode tasks never take them
    torch_threads: int | None  # intra-op threads per actor (None: torch's default, on GPU)
    model_cpus: float  # the CPUs the costs say the model needs (for the record)


def share(cpus: float, costs: Costs, *, node_cpus: float | None = None, nodes: int = 1,
          gpus: float = 0, gpus_per_actor: float = 0) -> Shares:
    """Split `cpus` between the stages in proportion to their costs (see the module doc).

    `node_cpus`: the most CPUs one of the `nodes` has (all of `cpus` by default). An actor
    lives on one node, so it never asks for more: on a cluster of small nodes the model gets
    more actors of fewer threads. On several nodes the model's reservation also leaves
    decoding a CPU after the loss of any one node: its actors come back elsewhere, and if
    they then held every CPU no video would be decoded again."""
    if gpus_per_actor > 0:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus else 1
        return Shares(actors, 1.0, None, float(actors))
    need = cpus * costs.model_s / max(costs.model_s + costs.decode_s, 1e-9)
    if need < 0.5 or cpus < 2:
        # a model that needs under half a CPU shares the cores with decoding (it runs in
        # their gaps): reserving a whole CPU for it would idle that CPU
        return Shares(1, 0.0, 1, need)
    spare = int(node_cpus or cpus) if nodes > 1 else 0  # what losing a node takes away
    most = int(cpus) - spare - 1  # decoding keeps at least one CPU
    if most < 1:
        return Shares(1, 0.0, 1, need)
    model_cpus = min(max(1, round(need)), most)
    per_actor = max(1, min(THREADS_PER_ACTOR, int(node_cpus or cpus)))
    actors = math.ceil(model_cpus / per_actor)
    threads = max(1, model_cpus // actors)
    if nodes == 1 and threads == 1 and _gain_of_one_more_thread(cpus, model_cpus, costs) >= 1.05:
        # whole CPUs leave the model short (1.4 CPUs' worth on 2 CPUs gets 1): one more
        # one-thread actor, on the same reservation, takes the rest; the OS then shares the
        # cores between it and decoding. One machine only: on several, actors of part of a
        # CPU on different nodes could leave no node a whole CPU for a decode task once one
        # is lost
        actors += 1
    return Shares(actors, model_cpus / actors, threads, need)


def _gain_of_one_more_thread(cpus: float, model_cpus: int, costs: Costs) -> float:
    """How much faster (videos/s, a ratio) the job would be with one more model thread than
    the model's reserved CPUs, by the stages' bounds: with `model_cpus` threads the model and
    decoding each keep to their CPUs; with one more, the model can also use what decoding
    leaves idle, up to what all the CPUs can do. Measured on 2 CPUs, ResNet-18 at 224 px:
    2 one-thread actors on 1 CPU labelled 1.87 videos/s against 1.55 with one."""
    model_s, decode_s = max(costs.model_s, 1e-9), max(costs.decode_s, 1e-9)
    alone = min(model_cpus / model_s, (cpus - model_cpus) / decode_s)
    shared = min((model_cpus + 1) / model_s, (cpus - model_cpus) / decode_s,
                 cpus / (model_s + decode_s))
    return shared / alone


def measure(model, sample_inputs, decode_spec, *, batch: int = 32) -> Costs:
    """Per-video costs on this machine: decode `sample_inputs` (ObjectInfo) and run `model`
    on one forward pass of clips, one thread each, as the stages will (the actors get
    `batch` clips per call and pass them through the model a few at a time on CPU)."""
    import torch

    from pipeline.fetch_decode import fetch_decode
    from pipeline.model_stage import clips_per_pass, for_inference
    from pipeline.transforms import normalize, resize_crop

    job = dataclasses.replace(decode_spec.job, gpu_backend=None)  # what decoding here costs
    # thread_time: this thread's CPU alone, as the job measures while Ray starts beside it
    decode = []
    for obj in sample_inputs:
        started = time.thread_time()
        decoded = fetch_decode(obj, job)
        if decoded.frames is not None:
            resize_crop(decoded.frames, decode_spec.resize_size, decode_spec.input_size)
            decode.append(time.thread_time() - started)
    config = model.config
    model = for_inference(model, use_gpu=False)
    batch = clips_per_pass(config, use_gpu=False, batch=batch)
    clips = torch.zeros(batch, config.num_segments, 3, config.input_size, config.input_size,
                        dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            model.logits_and_features(normalize(clips, config.mean, config.std))  # warm
            started = time.thread_time()
            model.logits_and_features(normalize(clips, config.mean, config.std))
            model_s = (time.thread_time() - started) / batch
    finally:
        torch.set_num_threads(threads)
    # no video decoded (all broken): decoding is as cheap as it gets, the model sets the pace
    return Costs(decode_s=sum(decode) / len(decode) if decode else 0.0, model_s=model_s)
