"""Loss curves are drawn from a results file's history (Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_utils.plots import loss_series, plot_loss_curves  # noqa: E402

HISTORY = [
    {"step": 0, "eval_loss": 2.5},
    {"step": 1, "loss": 2.4, "step_seconds": 1.0},
    {"step": 2, "loss": 1.9, "step_seconds": 1.0, "eval_loss": 1.8},
    {"step": 3, "loss": 1.5, "step_seconds": 1.0},
    {"step": 4, "loss": 1.2, "step_seconds": 1.0, "eval_loss": 1.3},
]


def test_loss_series_picks_one_quantity():
    assert loss_series(HISTORY, "loss") == ([1, 2, 3, 4], [2.4, 1.9, 1.5, 1.2])
    assert loss_series(HISTORY, "eval_loss") == ([0, 2, 4], [2.5, 1.8, 1.3])


def test_plot_from_a_results_dict_draws_both_curves():
    ax = plot_loss_curves({"notebook": "02_full_finetuning", "extra": {"history": HISTORY}})
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"training loss", "evaluation loss"}
    assert list(lines["training loss"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["evaluation loss"].get_ydata()) == [2.5, 1.8, 1.3]
    assert "step" in ax.get_xlabel()
    plt.close(ax.figure)


def test_plot_on_a_given_axes_from_a_plain_history():
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
    with pytest.raises(ValueError, match="extra\\['history'\\]"):
        plot_loss_curves({"notebook": "00_setup_check", "extra": {}})
