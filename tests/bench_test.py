"""The benchmark's eval and generate modes run and report what they say (no timing is asserted:
benchmarks are never timed tests)."""

import pytest

from configs import fast_weights, sha_rnn, story_of_heads
from lmjax import bench
from lmjax.errors import UserError


@pytest.mark.parametrize(
    "config,state",
    [(sha_rnn.get_config("tiny"), True), (fast_weights.get_config("tiny,attn=softmax"), False)],
    ids=["sha_rnn", "softmax"],
)
def test_generate_reports_each_length_and_whether_there_is_a_decoding_state(config, state):
    out = bench.benchmark_generate(config, lengths=(2, 5), batches=(1, 3), prompt_len=3, repeats=1)
    assert out["decoding_state"] is state and out["prompt_len"] == 3
    assert [(r["batch"], r["length"]) for r in out["lengths"]] == [(1, 2), (1, 5), (3, 2), (3, 5)]
    assert all(r["tokens_per_sec"] > 0 and r["ms_per_token"] > 0 for r in out["lengths"])
    for r in out["lengths"]:  # all sequences' tokens, and one sequence's
        assert r["tokens_per_sec"] == pytest.approx(
            r["batch"] * r["tokens_per_sec_per_sequence"], rel=0.01
        )


def test_eval_scores_the_whole_valid_split():
    config = sha_rnn.get_config("tiny")
    out = bench.benchmark_eval(config)
    assert out["protocol"] == "carry" and out["targets"] > 0 and out["tokens_per_sec"] > 0


def test_translation_is_refused_in_one_line():
    with pytest.raises(UserError, match="for language models, not TranslationTask"):
        bench.benchmark_generate(story_of_heads.get_config("tiny"), lengths=(2,))
