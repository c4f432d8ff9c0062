"""BLEU: sacreBLEU's number passed through, and C.7's tokenised BLEU against a hand computation."""

import math

import pytest
import sacrebleu

from lmjax import bleu

HYPS = ["The cat sat on the mat.", "A dog, running in the park!"]
REFS = ["The cat is on the mat.", "A dog runs in the park!"]


def test_sacre_bleu_is_sacrebleu():
    assert bleu.sacre_bleu(HYPS, REFS) == sacrebleu.corpus_bleu(HYPS, [REFS]).score


def test_tokenized_bleu_by_hand():
    # hyp a b c d e f (c = 6) against a b c d x f g (r = 7): clipped matches 5/6, 3/5, 2/4, 1/3.
    want = math.exp(1 - 7 / 6) * math.exp(
        (math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4
    )
    assert bleu.tokenized_bleu(["a b c d e f"], ["a b c d x f g"]) == round(100 * want, 4)
    # Counts are clipped and summed over the corpus before the precisions are taken.
    corpus = bleu.tokenized_bleu(["a a a a", "b c d e"], ["a a b c", "b c d e"])
    p = [(2 + 4) / (4 + 4), (1 + 3) / (3 + 3), (0 + 2) / (2 + 2), (0 + 1) / (1 + 1)]
    assert corpus == pytest.approx(100 * math.exp(sum(map(math.log, p)) / 4), abs=1e-4)
    assert bleu.tokenized_bleu(["a b c"], ["a b c"]) == 0.0  # no 4-gram: a zero precision
    assert bleu.tokenized_bleu(["x y z w v"], ["x y z w v"]) == 100.0


def test_paper_bleu_tokenizes_and_lowercases():
    assert bleu.tokenize_lower("A dog, running!") == "a dog , running !"
    assert bleu.paper_bleu(["THE CAT SAT ON THE MAT ."], ["the cat sat on the mat."]) == 100.0
