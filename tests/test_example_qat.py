"""examples/qat.py runs end to end (short training); skipped where scikit-learn, an optional extra, is absent."""

import pytest

pytest.importorskip("sklearn")

from examples import qat  # noqa: E402


def test_the_example_prints_float_post_training_and_qat_accuracy(capsys):
    results = qat.main(["--fp32-epochs", "2", "--qat-epochs", "2"])
    assert list(results) == ["fp32", "int8, post-training", "int8, after 2 QAT epochs"]
    assert all(0.0 <= value <= 1.0 for value in results.values())
    assert capsys.readouterr().out.count("% of 397 test digits") == 3
