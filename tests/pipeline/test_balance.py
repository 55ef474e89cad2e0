"""Sharing the CPUs between decoding and the model, from what each costs."""

from __future__ import annotations

import pytest

from pipeline.balance import Costs, Shares, share
from pipeline.settings import LabelConfig


@pytest.mark.parametrize("cpus, decode_s, model_s, expected", [
    # a model as costly as decoding on 2 cores: one actor keeps a CPU, decoding the other
    (2, 0.3, 0.3, Shares(1, 1.0, 1, 1.0)),
    # a light model: it runs in decoding's gaps, reserving nothing
    (2, 0.5, 0.05, Shares(1, 0.0, 1, 2 * 0.05 / 0.55)),
    # 32 cores, the model costs 3x decoding: 24 CPUs -> 6 actors of 4 threads
    (32, 0.1, 0.3, Shares(6, 4.0, 4, 24.0)),
    # the model never takes every CPU: decoding keeps one
    (4, 0.001, 1.0, Shares(1, 3.0, 3, 4 * 1.0 / 1.001)),
])
def test_cpus_follow_the_costs(cpus, decode_s, model_s, expected):
    got = share(cpus, Costs(decode_s, model_s))
    assert (got.actors, got.cpus_per_actor, got.torch_threads) == (
        expected.actors, expected.cpus_per_actor, expected.torch_threads)
    assert got.model_cpus == pytest.approx(expected.model_cpus)


def test_an_actor_never_asks_for_more_cpus_than_a_node_has():
    # 4 nodes of 1 CPU: a 2-CPU actor could go nowhere; 1-CPU actors, and after losing any
    # node one CPU is still left to decode
    got = share(4, Costs(0.1, 0.3), node_cpus=1, nodes=4)
    assert (got.actors, got.cpus_per_actor, got.torch_threads) == (2, 1.0, 1)
    # 16 nodes of 2 CPUs, a heavy model: actors of 2 threads
    got = share(32, Costs(0.1, 0.3), node_cpus=2, nodes=16)
    assert (got.actors, got.cpus_per_actor, got.torch_threads) == (12, 2.0, 2)


def test_on_several_nodes_losing_one_leaves_decoding_a_cpu():
    # 3 nodes of 1 CPU (the multi-node tests' cluster), the model 3x decoding: reserving 2
    # would leave nothing to decode once a node is lost, so the model reserves 1
    got = share(3, Costs(0.1, 0.3), node_cpus=1, nodes=3)
    assert (got.actors, got.cpus_per_actor) == (1, 1.0)
    # 2 nodes of 1 CPU: any reservation could leave decoding nothing: the model shares
    got = share(2, Costs(0.1, 0.3), node_cpus=1, nodes=2)
    assert (got.actors, got.cpus_per_actor) == (1, 0.0)
    # one machine: nothing to lose but the machine
    assert share(3, Costs(0.1, 0.3)).cpus_per_actor == 2.0


def test_a_model_short_of_a_whole_cpu_gets_one_more_actor_on_the_same_cpus():
    # 2 CPUs, the model needs 1.4 of them: 1 reserved CPU, shared by 2 one-thread actors
    got = share(2, Costs(0.3, 0.7))
    assert (got.actors, got.cpus_per_actor, got.torch_threads) == (2, 0.5, 1)
    # 1.2 of them: the CPU decoding leaves idle is still worth a second thread (the bound
    # goes from 1.67 to 2.0 videos/s)
    assert share(2, Costs(0.4, 0.6)).actors == 2
    # 1.02 of them: one more thread would add 2 %, not worth a third busy process on 2 cores
    assert share(2, Costs(0.5, 0.52)).actors == 1


def test_on_gpus_each_actor_gets_a_gpu_and_one_cpu_to_feed_it():
    assert share(16, Costs(0.2, 0.01), gpus=4, gpus_per_actor=1) == Shares(4, 1.0, None, 4.0)


def test_flags_decide_when_set():
    config = LabelConfig(input="i", output="o", model="m")
    assert config.balanced
    fixed = LabelConfig(input="i", output="o", model="m", actors=2)
    assert not fixed.balanced
    assert fixed.shares() == Shares(2, 0.0, 1, 0.0)
    gpu = LabelConfig(input="i", output="o", model="m", gpus_per_actor=1, actors=2)
    assert gpu.shares() == Shares(2, 1.0, None, 1.0)


def test_measured_costs_are_positive_for_a_real_video_and_model(video_corpus, tiny_model):
    import tsm_model
    from pipeline.balance import measure
    from pipeline.decode_stage import DecodeSpec
    from pipeline.store import store_for

    model = tsm_model.load(tiny_model)
    spec = DecodeSpec.from_settings(model.config, LabelConfig(input="i", output="o", model="m"))
    path = str(video_corpus["h264"])
    costs = measure(model, [store_for(path).stat(path)], spec)
    assert costs.decode_s > 0 and costs.model_s > 0
