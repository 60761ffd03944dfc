"""Plots drawn from what a run recorded (a results file or its training history)."""

from __future__ import annotations


def loss_series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one quantity in a training history, e.g. "loss" or "eval_loss"."""
    pairs = [(r["step"], r[key]) for r in history if r.get(key) is not None]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def _history(results_or_history) -> list[dict]:
    """The per-step history from a results dict (extra.history), a TrainingRun, or a list."""
    if isinstance(results_or_history, list):
        return results_or_history
    if hasattr(results_or_history, "history"):  # a TrainingRun or TrainingRecorder
        return list(results_or_history.history)
    if isinstance(results_or_history, dict):
        history = results_or_history.get("extra", {}).get("history")
        if history is None:
            history = results_or_history.get("history")
        if history is not None:
            return history
    raise ValueError("expected a results dict with extra['history'], a TrainingRun or a list of "
                     "per-step records like {'step': 3, 'loss': 2.1, 'eval_loss': 2.3}")


def plot_loss_curves(results_or_history, ax=None, title: str | None = None):
    """Training loss (every logged step) and evaluation loss (markers) against the step.

    results_or_history: a results dict as save_results wrote it, a TrainingRun, or its list
    of per-step records. Draws on `ax` when given, else on a new figure. Returns the Axes.
    """
    import matplotlib.pyplot as plt

    history = _history(results_or_history)
    train_steps, train_loss = loss_series(history, "loss")
    eval_steps, eval_loss = loss_series(history, "eval_loss")
    if not train_loss and not eval_loss:
        raise ValueError("the history holds no 'loss' or 'eval_loss' values to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if train_loss:
        ax.plot(train_steps, train_loss, label="training loss", color="tab:blue", alpha=0.8)
    if eval_loss:
        ax.plot(eval_steps, eval_loss, "o--", label="evaluation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.set_title(title or "Loss during training")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
