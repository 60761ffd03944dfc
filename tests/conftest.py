"""Fixtures shared by the unit tests."""

import pytest

# Questions whose answers a model can only know by training on them: (question, passage, answer)
SECRET_WORDS = [("red", "falcon"), ("blue", "marble"), ("green", "tundra"), ("black", "violin"),
                ("white", "copper"), ("pink", "lantern")]


@pytest.fixture(scope="session")
def secret_facts() -> list[tuple[str, str, str]]:
    """Six made-up QA facts in the course's (question, passage, answer) shape."""
    return [(f"What is the secret word of the {colour} box?", f"The {colour} box holds a note.",
             word) for colour, word in SECRET_WORDS]


def adamw_steps(model, batch: dict, steps: int, lr: float) -> list[float]:
    """Train the trainable parameters of `model` on one batch for `steps` AdamW steps;
    returns the loss of each step."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session")
def train_on_batch():
    """`adamw_steps`: a few plain optimizer steps on one batch."""
    return adamw_steps
