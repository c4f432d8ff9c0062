"""reference/compare.py's table: medians over rounds, ratios, targets, the README markers."""

import importlib.util
import os
import platform

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "reference", "compare.py")
_spec = importlib.util.spec_from_file_location("compare", _PATH)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def _rec(row, side, tps, rss=100.0, frac=None):
    return {"row": row, "side": side, "tokens_per_sec": tps, "peak_rss_mb": rss,
            "peak_fraction": frac}  # fmt: skip


def test_table_takes_medians_over_rounds_and_marks_targets():
    rows = {r.name: r for r in compare.ROWS}
    recs = [_rec("sha_rnn", "lmjax", t, frac=0.3) for t in (100, 300, 120)]
    recs += [_rec("sha_rnn", "reference", t, rss=50) for t in (100, 90, 110)]
    recs += [_rec("fw_linear", "lmjax", 200), _rec("fw_delta_linear", "lmjax", 210)]
    recs += [_rec("fw_linear", "reference", 100)]
    out = compare.table([rows["sha_rnn"], rows["fw_linear"], rows["fw_delta_linear"]], recs)
    lines = out.splitlines()
    assert len(lines) == 5
    # median 120 / median 100 = 1.2, exactly SHA-RNN's target
    assert "| 120 |" in lines[2] and "| 100 |" in lines[2] and "**1.20**" in lines[2]
    assert "1.2x met" in lines[2] and "100 / 50" in lines[2] and "0.300" in lines[2]
    assert "**2.00**" in lines[3] and "1.5x met" in lines[3]
    # the delta rule is measured against lmjax's own sum-rule linear model
    assert "**1.05**" in lines[4] and "1x met" in lines[4]
    missed = compare.table([rows["sha_rnn"]], [_rec("sha_rnn", "lmjax", 100),
                                               _rec("sha_rnn", "reference", 100)])  # fmt: skip
    assert "**missed**" in missed


def test_readme_block_is_replaced_between_the_markers_only():
    text = f"head\n{compare.BEGIN}\nold\n{compare.END}\ntail\n"
    assert compare.replace_between_markers(text, "new") == (
        f"head\n{compare.BEGIN}\nnew\n{compare.END}\ntail\n"
    )
    with pytest.raises(ValueError, match="markers"):
        compare.replace_between_markers("no markers", "new")


def test_unknown_rows_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(["--rows", "nope"])
    assert e.value.code == 2
    assert "unknown --rows nope; known: sha_rnn," in capsys.readouterr().err


def test_cpu_name_names_the_model_and_vector_unit(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n" * 2)
    assert compare.cpu_name(str(info)) == "AMD EPYC (AVX2)"
    info.write_text("model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512bw\n")
    assert compare.cpu_name(str(info)) == "Intel Xeon (AVX-512)"
    assert compare.cpu_name(str(tmp_path / "absent")) == platform.machine()
