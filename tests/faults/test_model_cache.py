"""The converted-model cache under faults: a folder without its completion marker, a weights
file cut short, a conversion killed with SIGKILL midway, a cache that cannot be written, and
another process's conversion in progress.

The GGUF conversion itself (15-30 s) is replaced by a tiny random Llama and the packaged MiniLM
tokenizer: what is tested is how the cache is written, recovered and refused. As root chmod does
not stop writes, so a read-only cache is a file where the folder should be, or a patched call
that raises the PermissionError a read-only disk gives (a real chmod case runs when not root).
"""

import errno
import os
import random
import tempfile

import pytest
from fault_helpers import cut_short, run_killed

from course_utils import models
from course_utils.config import CACHE_ENV_VAR, CacheUnwritableError
from course_utils.models import CONVERTED_MARKER, converted_packaged_folder

KEY = "smollm2-135m-instruct"
FAKE_CONVERSION = """
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from course_utils import models

def fake_convert(spec, source):
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    tokenizer = AutoTokenizer.from_pretrained(models.packaged_model_folder("all-minilm-l6-v2"))
    return AutoModelForCausalLM.from_config(config), tokenizer

models._convert_gguf = fake_convert
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and the tiny conversion in place of the GGUF one."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    namespace = {}
    exec(FAKE_CONVERSION, namespace)  # the same code the killed subprocess runs
    monkeypatch.setattr(models, "_convert_gguf", namespace["fake_convert"])
    return tmp_path / "cache" / "models"


def target(cache):
    return cache / f"{KEY}-{models.packaged_model(KEY).version}"


def contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def assert_complete(folder):
    assert (folder / CONVERTED_MARKER).is_file() and models._converted_problem(folder) is None
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder)  # it loads


def test_a_folder_without_its_marker_is_set_aside_and_rebuilt(cache):
    folder = converted_packaged_folder(KEY)
    (folder / CONVERTED_MARKER).unlink()          # as a copy or an old version left it
    left = contents(folder)
    with pytest.warns(UserWarning, match=rf"{folder} is incomplete: it has no completion marker"
                                         rf".*set aside as {folder}\.incomplete-"):
        again = converted_packaged_folder(KEY)
    assert again == folder
    assert_complete(folder)
    [aside] = cache.glob(f"{folder.name}.incomplete-*")
    assert contents(aside) == left, "what was there is kept, not deleted"


@pytest.mark.parametrize("seed", [11, 12])
def test_a_weights_file_cut_short_is_set_aside_and_rebuilt(cache, seed):
    folder = converted_packaged_folder(KEY)
    size = (folder / "model.safetensors").stat().st_size
    length = cut_short(folder / "model.safetensors", seed)
    with pytest.warns(UserWarning, match=rf"model.safetensors holds {length:,} bytes, not the "
                                         rf"{size:,} written.*converted again"):
        converted_packaged_folder(KEY)
    assert_complete(folder)
    [aside] = cache.glob(f"{folder.name}.incomplete-*")
    assert (aside / "model.safetensors").stat().st_size == length


def test_a_conversion_killed_midway_is_cleaned_up_on_the_next_load(cache, tmp_path):
    """SIGKILL after the weights are written into the staging folder, before the tokenizer and
    the marker: no folder looks finished, and the next call removes the leftovers, says how
    much it freed and converts again."""
    script = FAKE_CONVERSION + f"""
import os, signal
real = models._convert_gguf
def dying_convert(spec, source):
    model, tokenizer = real(spec, source)
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    tokenizer.save_pretrained = die
    return model, tokenizer
models._convert_gguf = dying_convert
models.converted_packaged_folder({KEY!r})
"""
    result = run_killed(script, env={CACHE_ENV_VAR: str(tmp_path / "cache")})
    assert result.returncode == -9, result.stderr[-2000:]
    [staging] = cache.glob(f".{KEY}-*")
    assert (staging / "model.safetensors").is_file() and not target(cache).exists()
    with pytest.warns(UserWarning, match=rf"Removed 1 unfinished model conversion folder\(s\) in "
                                         rf"{cache} left by an interrupted run \(\d+ MB freed\)"):
        folder = converted_packaged_folder(KEY)
    assert_complete(folder)
    assert not list(cache.glob(f".{KEY}-*"))


def test_another_process_conversion_in_progress_is_left_alone(cache):
    cache.mkdir(parents=True)
    running = cache / f".{KEY}-{os.getppid()}-abc123"   # a live process's staging folder
    running.mkdir()
    (running / "model.safetensors").write_bytes(b"half written")
    converted_packaged_folder(KEY)
    assert (running / "model.safetensors").read_bytes() == b"half written"


def test_a_file_where_the_cache_folder_should_be(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv(CACHE_ENV_VAR, str(blocker / "cache"))
    with pytest.raises(CacheUnwritableError) as error:
        converted_packaged_folder(KEY)
    message = str(error.value)
    assert str(blocker / "cache") in message and CACHE_ENV_VAR in message
    assert blocker.read_text() == "a file"


def test_a_read_only_cache_says_where_to_point_it(cache, monkeypatch):
    """A disk mounted read-only: the staging folder cannot be made (patched, as root can
    write anywhere)."""
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(CacheUnwritableError) as error:
        converted_packaged_folder(KEY)
    message = str(error.value)
    assert str(cache) in message and "Read-only file system" in message
    assert f"export {CACHE_ENV_VAR}=" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o555)
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    try:
        with pytest.raises(CacheUnwritableError, match=CACHE_ENV_VAR):
            converted_packaged_folder(KEY)
    finally:
        folder.chmod(0o755)


def test_a_damaged_marker_is_set_aside(cache):
    folder = converted_packaged_folder(KEY)
    marker = folder / CONVERTED_MARKER
    marker.write_bytes(marker.read_bytes()[: random.Random(5).randint(1, 20)])
    with pytest.warns(UserWarning, match=f"its marker {CONVERTED_MARKER} cannot be read"):
        converted_packaged_folder(KEY)
    assert_complete(folder)
