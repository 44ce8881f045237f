"""Shared fixtures (a tiny random BERT in the Hugging Face layout, a tiny MELD-format dataset, the
demo dataset, a launcher server) and the longest test files started first."""
import json
import pathlib

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


@pytest.fixture(scope="module")
def compiled_once(tmp_path_factory):
    """A JAX compilation cache for one test module's duration, so that the runs of a module that
    build the same programs again (each fit, prepare and load_run jits its own) compile each of
    them once; the settings are put back when the module ends. Where this JAX has no cache reset
    to call, every program compiles as usual."""
    try:
        from jax._src import compilation_cache  # JAX decides once per process whether to use the cache
    except ImportError:
        yield
        return
    import jax

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("compiled")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


# -- the longest files first -----------------------------------------------------------------------
# ``run.py test`` gives whole files to two workers (--dist=loadfile) in collection order
# (--no-loadscope-reorder): started first, the longest files cannot leave one worker busy long
# after the other ran out of files. Seconds per file of a whole run (--durations), roughly; files
# not listed come after, in their usual order. Refresh when a file's cost changes much.
FILE_SECONDS = {
    "test_train.py": 377,
    "test_finetune_media.py": 246,
    "test_partial_finetune.py": 220,
    "test_finetune.py": 149,
    "test_dialogue_context.py": 135,
    "test_benchmark.py": 104,
    "test_precision_demo.py": 102,
    "test_infer_notebook.py": 73,
    "test_infer_batch.py": 72,
    "test_neural_features.py": 70,
    "test_faults.py": 64,
    "test_infer_context.py": 63,
    "test_audio_encoder_parity.py": 63,
    "test_fusion.py": 61,
    "test_whisper_asr.py": 53,
    "test_losses.py": 50,
    "test_bert_parity.py": 44,
    "test_launch.py": 43,
    "test_demo_dataset.py": 38,
    "test_fusion_layers.py": 37,
    "test_sweep.py": 28,
    "test_text_encoder.py": 27,
    "test_events.py": 24,
    "test_vision_modernbert_parity.py": 23,
    "test_distillation.py": 20,
    "test_run_identity.py": 20,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))
