"""Loss curves drawn from a log history (Trainer + StepStats), e.g. a record's
training.history (Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from fixtures.records import synthetic_records  # noqa: E402

from course_utils.results import plot_loss_curves  # noqa: E402
from course_utils.training import series  # noqa: E402

HISTORY = [
    {"step": 0, "train_start_mib": 1800.0},
    {"step": 0, "eval_loss": 2.5},
    {"step": 1, "step_seconds": 1.0, "tokens": 100, "tokens_per_second": 100.0, "peak_mib": 1.0},
    {"step": 1, "loss": 2.4, "learning_rate": 1e-4},
    {"step": 2, "step_seconds": 1.0, "tokens": 100, "tokens_per_second": 100.0, "peak_mib": 1.0},
    {"step": 2, "loss": 1.9, "learning_rate": 1e-4},
    {"step": 2, "eval_loss": 1.8},
    {"step": 3, "loss": 1.5},
    {"step": 4, "loss": 1.2},
    {"step": 4, "eval_loss": 1.3},
]


def lines_of(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_series_picks_one_quantity():
    assert series(HISTORY, "loss") == ([1, 2, 3, 4], [2.4, 1.9, 1.5, 1.2])
    assert series(HISTORY, "eval_loss") == ([0, 2, 4], [2.5, 1.8, 1.3])
    assert series(HISTORY, "step_seconds") == ([1, 2], [1.0, 1.0])
    assert series(HISTORY, "grad_norm") == ([], [])


def test_plot_draws_both_curves_from_a_log_history():
    ax = plot_loss_curves(HISTORY)
    lines = lines_of(ax)
    assert set(lines) == {"training loss", "evaluation loss"}
    assert list(lines["training loss"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["evaluation loss"].get_ydata()) == [2.5, 1.8, 1.3]
    assert "step" in ax.get_xlabel() and ax.get_title() == "Loss during training"
    plt.close(ax.figure)


def test_plot_from_a_records_training_history():
    record = synthetic_records()["03_lora"]
    ax = plot_loss_curves(record.training.history, title=record.method)
    lines = lines_of(ax)
    assert list(lines["training loss"].get_xdata()) == list(range(1, 9))
    assert list(lines["evaluation loss"].get_xdata()) == [0, 4, 8]
    assert ax.get_title() == "LoRA"
    plt.close(ax.figure)


def test_plot_on_a_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_loss_curves(HISTORY, ax=right, title="run B") is right
    assert right.get_title() == "run B" and not left.get_lines()
    plt.close(fig)


def test_only_evaluation_losses_still_plot():
    ax = plot_loss_curves([{"step": 0, "eval_loss": 3.0}, {"step": 5, "eval_loss": 2.0}])
    assert [line.get_label() for line in ax.get_lines()] == ["evaluation loss"]
    plt.close(ax.figure)


def test_nothing_to_plot_is_a_clear_error():
    with pytest.raises(ValueError, match="no 'loss' or 'eval_loss'"):
        plot_loss_curves([{"step": 1, "step_seconds": 0.5}])
    with pytest.raises(ValueError, match="no 'loss' or 'eval_loss'"):
        plot_loss_curves([])
