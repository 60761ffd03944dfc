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
