"""Shared fixtures (a tiny random BERT in the Hugging Face layout, a tiny MELD-format dataset, the
demo dataset, a launcher server) and the longest test files started first."""
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

WORDS = {
    "neutral": ["okay", "fine", "table", "chair", "paper"],
    "joy": ["happy", "great", "wonderful", "love", "fun"],
    "surprise": ["wow", "really", "unbelievable", "whoa", "what"],
    "anger": ["angry", "hate", "furious", "stupid", "shut"],
    "sadness": ["sad", "sorry", "cry", "miss", "lonely"],
    "disgust": ["gross", "ew", "disgusting", "yuck", "nasty"],
    "fear": ["scared", "afraid", "help", "terrified", "nervous"],
}
SENTIMENT = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "anger": "negative",
             "sadness": "negative", "disgust": "negative", "fear": "negative"}


_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
    """The suite compiles hundreds of small programs and runs each for milliseconds, so compiling
    is most of its time. Two settings, for every test and every program a test starts:

    - XLA's backend optimisation at level 0 (a program compiles in about two thirds of the time;
      the same code runs in every process of the suite, so comparisons between them are unchanged);
    - one JAX compilation cache for the whole session, so that a program built again (each fit,
      prepare and load_run jits its own) compiles once. The xdist workers and the programs tests
      start inherit it from this process; an entry read while another process writes it is a
      miss for JAX (a warning, then an ordinary compile).

    Both are set in the environment before JAX is imported; an optimisation level already in
    ``XLA_FLAGS``, or a ``JAX_COMPILATION_CACHE_DIR`` already set, wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="emojax-tests-compiled-")
        os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                          JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        config.stash[_CACHE] = cache


def pytest_unconfigure(config):
    if _CACHE in config.stash:
        shutil.rmtree(config.stash[_CACHE], ignore_errors=True)


def shared_path(*parts) -> pathlib.Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the reference data lives in a 'shared' folder beside the repository")
    return path


def suite_golden(name: str) -> pathlib.Path:
    """A folder of the PyTorch suite's golden outputs: the copy under ``tests/fixtures`` (so a
    clone without the shared folder still runs these tests), else the shared folder's."""
    local = pathlib.Path(__file__).parent / "fixtures" / "suite_golden" / name
    return local if local.exists() else shared_path("fixtures", "suite-golden", name)


def write_tiny_bert(folder: pathlib.Path, *, hidden=32, layers=2, heads=4, intermediate=64, seed=0) -> pathlib.Path:
    """A random BERT saved as config.json + model.safetensors (PyTorch names) + vocab.txt."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted({w for ws in WORDS.values() for w in ws} | {"i", "am", "so", "the", "is", ":", "now",
                                                                         "feels", "<", ">", "s", "0", "1", "2"})
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(vocab), "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": intermediate,
              "hidden_act": "gelu", "max_position_embeddings": 128, "type_vocab_size": 2,
              "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 128,
                                                              "tokenizer_class": "BertTokenizer"}))
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.normal(size=shape) * 0.2).astype(np.float32)

    tensors = {
        "embeddings.word_embeddings.weight": w(len(vocab), hidden),
        "embeddings.position_embeddings.weight": w(128, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
        "pooler.dense.weight": w(hidden, hidden), "pooler.dense.bias": w(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            tensors[p + f"attention.self.{name}.weight"] = w(hidden, hidden)
            tensors[p + f"attention.self.{name}.bias"] = w(hidden)
        tensors[p + "attention.output.dense.weight"] = w(hidden, hidden)
        tensors[p + "attention.output.dense.bias"] = w(hidden)
        tensors[p + "attention.output.LayerNorm.weight"] = np.ones(hidden, np.float32)
        tensors[p + "attention.output.LayerNorm.bias"] = np.zeros(hidden, np.float32)
        tensors[p + "intermediate.dense.weight"] = w(intermediate, hidden)
        tensors[p + "intermediate.dense.bias"] = w(intermediate)
        tensors[p + "output.dense.weight"] = w(hidden, intermediate)
        tensors[p + "output.dense.bias"] = w(hidden)
        tensors[p + "output.LayerNorm.weight"] = np.ones(hidden, np.float32)
        tensors[p + "output.LayerNorm.bias"] = np.zeros(hidden, np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def write_text_meld(folder: pathlib.Path, *, per_split=(140, 42, 42), seed=0) -> pathlib.Path:
    """A text-only MELD-format dataset whose utterances carry class words (no media files)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(WORDS)
    for split, n in zip(("train", "dev", "test"), per_split):
        rows = []
        for i in range(n):
            label = names[i % len(names)] if i < len(names) else names[rng.integers(len(names))]
            words = list(rng.choice(WORDS[label], size=2)) + list(rng.choice(["i", "am", "so", "the", "is"], size=2))
            rng.shuffle(words)
            dialogue, utt = divmod(i, 4)
            rows.append({"Sr No.": i + 1, "Utterance": " ".join(words), "Speaker": ["Ross", "Monica"][utt % 2],
                         "Emotion": label, "Sentiment": SENTIMENT[label], "Dialogue_ID": dialogue,
                         "Utterance_ID": utt, "Season": 1, "Episode": 1, "StartTime": "00:00:01,000",
                         "EndTime": "00:00:02,000"})
        pd.DataFrame(rows).to_csv(folder / f"{split}_sent_emo.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> pathlib.Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def text_meld(tmp_path_factory) -> pathlib.Path:
    return write_text_meld(tmp_path_factory.mktemp("text-meld"))


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> pathlib.Path:
    """The full demo dataset (``python3 run.py demo``'s), generated once per test session."""
    from emojax.data.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0)


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    """Launcher commands forked from a server that imported the libraries once:
    ``launcher.run("train", "--flag=value", ...)`` -> ``subprocess.CompletedProcess`` (see
    ``launchers.py``; ``launchers.fresh`` starts a new interpreter instead)."""
    from launchers import LauncherServer

    server = LauncherServer(tmp_path_factory.mktemp("launcher-output"))
    yield server
    server.close()


# -- the longest files first -----------------------------------------------------------------------
# ``run.py test`` gives whole files to two workers (--dist=loadfile) in collection order
# (--no-loadscope-reorder): started first, the longest files cannot leave one worker busy long
# after the other ran out of files. Seconds per file of a whole run (--durations), roughly; files
# not listed come after, in their usual order. Refresh when a file's cost changes much.
FILE_SECONDS = {
    "test_slurm.py": 270,  # mostly waiting for SLURM (a one-minute time limit)
    "test_finetune_media.py": 255,
    "test_gpu_check.py": 190,  # the GPU check's dry run: a dozen small programs compiled on the CPU
    "test_train.py": 204,
    "test_readme_commands.py": 130,
    "test_partial_finetune.py": 142,
    "test_recipes.py": 400,
    "test_precision_demo.py": 110,
    "test_neural_features.py": 93,
    "test_dialogue_context.py": 67,
    "test_infer_notebook.py": 63,
    "test_finetune.py": 60,
    "test_keep_state.py": 20,
    "test_compile_cache.py": 20,
    "test_infer_batch.py": 59,
    "test_faults_signals.py": 80,
    "test_install.py": 70,
    "test_faults_runs.py": 75,
    "test_faults.py": 52,
    "test_infer_context.py": 49,
    "test_fusion.py": 47,
    "test_launch.py": 45,
    "test_benchmark.py": 43,
    "test_demo_dataset.py": 42,
    "test_audio_encoder_parity.py": 34,
    "test_whisper_asr.py": 32,
    "test_sweep.py": 31,
    "test_fusion_layers.py": 28,
    "test_bert_parity.py": 27,
    "test_distillation.py": 21,
    "test_losses.py": 21,
    "test_training_options.py": 60,
    "test_faults_store.py": 20,
    "test_run_reporting.py": 60,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))
