"""The paper's synthetic retrieval experiment (lmjax/retrieval.py): past the key dimension the
delta rule keeps retrieving the recent pairs where the sum rule's crosstalk grows, and after
overwrites it returns each key's last value exactly where the sum rule returns their sum."""

from lmjax import retrieval


def test_delta_retrieves_beyond_capacity_where_sum_degrades():
    d = 32
    # Measured (seed 0): 2d pairs, the last 8 queried: sum 1.71, delta 0.14 (relative MSE).
    sum_err = retrieval.retrieval_error("sum", 2 * d, key_dim=d, recent=8)
    delta_err = retrieval.retrieval_error("delta", 2 * d, key_dim=d, recent=8)
    assert sum_err > 1.0 and delta_err < 0.25 and sum_err > 5 * delta_err
    # All 2d pairs queried: both degrade, the delta rule half as much (1.91 vs 0.98).
    assert retrieval.retrieval_error("delta", 2 * d) < 0.6 * retrieval.retrieval_error("sum", 2 * d)


def test_delta_retrieves_after_overwriting():
    # 16 orthonormal keys rewritten until 128 writes: delta exact, sum the sum of the values.
    assert retrieval.retrieval_error("delta", 128, setting="overwrite") < 1e-6
    assert retrieval.retrieval_error("sum", 128, setting="overwrite") > 3.0
    # Without overwrites (each key written once) both are exact.
    for rule in ("sum", "delta"):
        assert retrieval.retrieval_error(rule, 16, setting="overwrite") < 1e-6
