import json
import socket
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from quantize import data
from quantize.data import (
    DataError,
    calibration_batches,
    evaluation_windows,
    load_texts,
    resolve_dataset,
    synthetic_texts,
)

# the GPU image has no `datasets` (CI and the CPU venvs do): these are CPU tests of the data pipeline
datasets = pytest.importorskip("datasets")

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
needs_wikitext = pytest.mark.skipif(not WIKITEXT.is_dir(), reason=f"no WikiText-2 copy at {WIKITEXT}")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 2..257), plus <s> = 0 and </s> = 1: token counts are byte counts."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "</s>": 1, **{char: i + 2 for i, char in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- load_texts ------------------------------------------------------------------------------


@needs_wikitext
def test_wikitext_test_rows_join_to_the_standard_text(no_network):
    rows = load_texts(str(WIKITEXT / "test.jsonl"), split="test")
    assert len(rows) == 4358 and rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert len("\n\n".join(rows)) == 1_294_336


@needs_wikitext
def test_plain_text_keeps_every_line_and_newline(no_network):
    path = WIKITEXT / "wiki.valid.tokens"
    rows = load_texts(str(path))
    assert len(rows) == 3760
    assert "".join(rows) == path.read_text(encoding="utf-8")


def test_text_file_rows_are_lines_with_their_endings(tmp_path, no_network):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\n  indented\nlast")
    assert load_texts(str(path)) == ["first line\n", "\n", "  indented\n", "last"]


def test_csv_parquet_and_jsonl_with_another_column(tmp_path, no_network):
    table = datasets.Dataset.from_dict({"id": [1, 2, 3], "body": ["alpha", None, "gamma"]})
    table.to_csv(str(tmp_path / "rows.csv"))
    table.to_parquet(str(tmp_path / "rows.parquet"))
    write_jsonl(tmp_path / "rows.jsonl", table.to_list())
    for name in ("rows.csv", "rows.parquet", "rows.jsonl"):
        assert load_texts(str(tmp_path / name), text_column="body") == ["alpha", "", "gamma"], name


def test_saved_dataset_and_dataset_dict(tmp_path, no_network):
    train = datasets.Dataset.from_dict({"text": ["one", "two"]})
    train.save_to_disk(str(tmp_path / "single"))
    assert load_texts(str(tmp_path / "single")) == ["one", "two"]

    splits = datasets.DatasetDict({"train": train, "validation": datasets.Dataset.from_dict({"text": ["three"]})})
    splits.save_to_disk(str(tmp_path / "splits"))
    assert load_texts(str(tmp_path / "splits"), split="validation") == ["three"]
    with pytest.raises(DataError, match=r"unknown split 'test' in .*splits: train, validation"):
        load_texts(str(tmp_path / "splits"), split="test")


def test_folder_of_data_files_takes_splits_from_file_names(tmp_path, no_network):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": "to calibrate"}])
    write_jsonl(folder / "test.jsonl", [{"text": "to evaluate"}])
    assert load_texts(str(folder), split="test") == ["to evaluate"]
    with pytest.raises(DataError, match=r"unknown split 'valid'.*\['train', 'test'\]"):
        load_texts(str(folder), split="valid")


def test_errors_name_the_offending_value(tmp_path, no_network):
    missing = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match=f"^dataset file not found: {missing}$"):
        load_texts(str(missing))
    path = write_jsonl(tmp_path / "rows.jsonl", [{"title": "a", "body": "b"}])
    with pytest.raises(DataError, match=r"no column 'text'; columns: title, body$"):
        load_texts(str(path))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "  \n"}])
    with pytest.raises(DataError, match="has no text"):
        load_texts(str(blank))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="has no text"):
        load_texts(str(tmp_path / "empty.txt"))
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"text": 1}])
    with pytest.raises(DataError, match="holds int, not text"):
        load_texts(str(numbers))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt is not UTF-8 text"):
        load_texts(str(tmp_path / "latin1.txt"))
    (tmp_path / "table.xlsx").write_text("")
    with pytest.raises(DataError, match="unsupported dataset file"):
        load_texts(str(tmp_path / "table.xlsx"))


def test_resolve_dataset_defaults_and_local_detection(tmp_path):
    assert resolve_dataset("wikitext") == data.DatasetSource("hub", "wikitext", "wikitext-2-raw-v1")
    assert resolve_dataset("wikitext", "wikitext-103-raw-v1").config == "wikitext-103-raw-v1"
    assert resolve_dataset("allenai/c4", "en") == data.DatasetSource("hub", "allenai/c4", "en")
    (tmp_path / "a.txt").write_text("x")
    assert resolve_dataset(str(tmp_path / "a.txt")).kind == "text"
    assert resolve_dataset(str(tmp_path)).kind == "folder"
    with pytest.raises(DataError, match="not found: ./nowhere"):
        resolve_dataset("./nowhere")
    with pytest.raises(DataError, match="synthetic_texts"):
        resolve_dataset("synthetic")


def test_hub_names_go_to_load_dataset_and_split_errors_are_data_errors(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, **kw):
        calls.append((name, config, kw))
        if kw["split"] == "nope":
            raise ValueError('Unknown split "nope". Should be one of [\'train\', \'test\'].')
        return datasets.Dataset.from_dict({"text": ["hub text"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("wikitext", split="test") == ["hub text"]
    assert calls == [("wikitext", "wikitext-2-raw-v1", {"split": "test"})]
    with pytest.raises(DataError, match=r"unknown split 'nope' in wikitext: .*\['train', 'test'\]"):
        load_texts("wikitext", split="nope")


# --- token windows ---------------------------------------------------------------------------


TEXTS = ["The quick brown fox jumps over the lazy dog.", "", "Pack my box with five dozen liquor jugs."]


def test_calibration_windows_are_seeded_slices_of_the_token_stream(tokenizer):
    stream = tokenizer("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"]
    calibration = calibration_batches(tokenizer, TEXTS, num_samples=4, seq_len=16, seed=3)
    assert calibration.input_ids.shape == (4, 16) and calibration.input_ids.dtype == torch.long
    assert calibration.num_tokens_available == len(stream) == 88
    assert calibration.warnings == []
    as_text = " ".join(map(str, stream))
    for window in calibration.input_ids.tolist():
        assert " ".join(map(str, window)) in as_text
    again = calibration_batches(tokenizer, TEXTS, num_samples=4, seq_len=16, seed=3)
    other = calibration_batches(tokenizer, TEXTS, num_samples=4, seq_len=16, seed=4)
    assert torch.equal(again.input_ids, calibration.input_ids)
    assert not torch.equal(other.input_ids, calibration.input_ids)


def test_short_calibration_text_warns_or_fails(tokenizer):
    calibration = calibration_batches(tokenizer, TEXTS, num_samples=8, seq_len=32)
    assert calibration.input_ids.shape == (8, 32)
    assert calibration.warnings == ["calibration text has 88 tokens, fewer than 8 x 32 = 256; windows overlap"]
    with pytest.raises(DataError, match="88 tokens; seq_len=88 needs at least 89"):
        calibration_batches(tokenizer, TEXTS, num_samples=1, seq_len=88)
    assert calibration_batches(tokenizer, TEXTS, num_samples=1, seq_len=87).input_ids.shape == (1, 87)


def test_calibration_batches_iterate_in_order(tokenizer):
    calibration = calibration_batches(tokenizer, TEXTS, num_samples=5, seq_len=8)
    batches = list(calibration.batches(2))
    assert [tuple(b.shape) for b in batches] == [(2, 8), (2, 8), (1, 8)]
    assert torch.equal(torch.cat(batches), calibration.input_ids)
    assert (calibration.num_samples, calibration.seq_len) == (5, 8)
    with pytest.raises(DataError, match="batch_size"):
        next(calibration.batches(0))


def test_evaluation_windows_drop_the_partial_tail(tokenizer):
    windows = evaluation_windows(tokenizer, TEXTS, seq_len=20)
    stream = tokenizer("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"]
    assert windows.shape == (4, 20)  # 88 tokens: 4 full windows, 8 dropped
    assert windows.flatten().tolist() == stream[:80]
    assert evaluation_windows(tokenizer, TEXTS, seq_len=20, max_windows=2).shape == (2, 20)
    with pytest.raises(DataError, match="less than one window of 100"):
        evaluation_windows(tokenizer, TEXTS, seq_len=100)


@needs_wikitext
def test_wikitext_evaluation_windows(tokenizer, no_network):
    rows = load_texts(str(WIKITEXT / "test.jsonl"))
    text = "\n\n".join(rows)
    windows = evaluation_windows(tokenizer, rows, seq_len=512)
    assert windows.shape == (len(text.encode()) // 512, 512)
    assert tokenizer.decode(windows[0]) == text.encode()[:512].decode()


@needs_wikitext
def test_wikitext_calibration(tokenizer, no_network):
    rows = load_texts(str(WIKITEXT / "wiki.valid.tokens"))
    calibration = calibration_batches(tokenizer, rows, num_samples=16, seq_len=256, seed=0)
    assert calibration.input_ids.shape == (16, 256) and calibration.warnings == []
    assert calibration.num_tokens_available == len("\n\n".join(rows).encode())


# --- synthetic -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def test_synthetic_samples_start_at_bos_and_are_seeded(tiny_llama, tokenizer):
    state = torch.get_rng_state()
    sample = synthetic_texts(tiny_llama, tokenizer, num_samples=3, seq_len=12, seed=1, batch_size=2)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    ids = sample.input_ids
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    assert ids.min() >= 0 and ids.max() < len(tokenizer)
    assert sample.num_tokens_available == 36 and sample.warnings == []
    repeat = synthetic_texts(tiny_llama, tokenizer, num_samples=3, seq_len=12, seed=1, batch_size=2)
    assert torch.equal(repeat.input_ids, ids)
    assert not torch.equal(synthetic_texts(tiny_llama, tokenizer, num_samples=3, seq_len=12, seed=2).input_ids, ids)


def test_synthetic_sampling_follows_the_model(tiny_llama, tokenizer):
    """At a very low temperature sampling is greedy: each token is the argmax after its prefix."""
    ids = synthetic_texts(tiny_llama, tokenizer, num_samples=2, seq_len=6, temperature=1e-4).input_ids
    with torch.no_grad():
        logits = tiny_llama(ids).logits
    assert torch.equal(logits[:, :-1].argmax(-1), ids[:, 1:])


def test_synthetic_settings_are_checked(tiny_llama, tokenizer):
    with pytest.raises(DataError, match="temperature"):
        synthetic_texts(tiny_llama, tokenizer, num_samples=1, seq_len=4, temperature=0)
    with pytest.raises(DataError, match="num_samples"):
        synthetic_texts(tiny_llama, tokenizer, num_samples=0, seq_len=4)
