"""BLEU two ways: sacreBLEU on detokenised text (the standard, comparable number) and the Story of
Heads reference's tokenised lowercase corpus BLEU-4 (specs/attention.md C.7), for comparison
with the paper's figures.

`tokenized_bleu` follows the reference's `lib/task/seq2seq/bleu.py`: whitespace tokens, n-gram
counts clipped by the reference's, summed over the corpus, uniform 1/4 log weights, brevity
penalty exp(1 - r/c) when the output is shorter, 0 if any precision is 0, x100 rounded to 4
decimals: multi-bleu.perl on tokenised lowercase text. The reference scores Moses-tokenised
lowercase text; `tokenize_lower` stands in for Moses with sacreBLEU's 13a tokeniser (the
mteval-v13a rules, which split punctuation as Moses does for these languages) and lowercasing,
applied alike to output and references.
"""

import collections
import math

import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

_TOKENIZE_13A = Tokenizer13a()


def sacre_bleu(hypotheses, references):
    """sacreBLEU's corpus BLEU (13a tokenisation, cased) of detokenised lines, one reference."""
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


def tokenize_lower(line):
    return _TOKENIZE_13A(line.strip()).lower()


def tokenized_bleu(hypotheses, references, max_order=4):
    """C.7's corpus BLEU-4 of already tokenised lines (whitespace-separated)."""
    matches, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_order + 1):
            h_grams = collections.Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            r_grams = collections.Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, r_grams[g]) for g, c in h_grams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_order
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return round(100.0 * brevity * math.exp(log_precision), 4)


def paper_bleu(hypotheses, references):
    """`tokenized_bleu` of detokenised lines after `tokenize_lower` on both sides."""
    return tokenized_bleu(map(tokenize_lower, hypotheses), map(tokenize_lower, references))
