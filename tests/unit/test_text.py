"""The built-in corpus and the offline tokenizer (job side)."""

import gzip

import pytest

from hpcrun.errors import ConfigError
from hpcrun.tasks.text import corpus_files, load_corpus, token_blocks, train_bpe


def test_the_builtin_corpus_is_real_english_shipped_with_the_package():
    text = load_corpus("shakespeare")[0]
    assert len(text) > 1_000_000
    assert "To be, or not to be" in text
    words = text.lower().split()
    assert sum(w in {"the", "and", "of", "to"} for w in words) / len(words) > 0.05


def test_a_folder_corpus_reads_txt_and_gz_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write("first")
    (tmp_path / "skip.md").write_text("not text")
    assert load_corpus(str(tmp_path)) == ["first", "second"]


def test_a_missing_corpus_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.corpus=.*nope.*expected an existing file or folder"):
        corpus_files(str(tmp_path / "nope"))


def test_bpe_training_is_deterministic_and_round_trips_text():
    docs = [load_corpus("shakespeare")[0][:200_000]]
    a, b = train_bpe(docs, 1000), train_bpe(docs, 1000)
    assert a.get_vocab() == b.get_vocab()
    sample = "Now is the winter of our discontent, café — 1603!"
    assert a.decode(a(sample)["input_ids"]) == sample  # byte-level: nothing is unknown


def test_token_blocks_split_the_stream_into_train_and_eval():
    docs = [load_corpus("shakespeare")[0][:100_000]]
    tok = train_bpe(docs, 600)
    train, evaluation = token_blocks(docs, tok, seq_len=64, eval_fraction=0.1)
    assert len(train) > 5 * len(evaluation) > 0
    item = train[0]
    assert item["input_ids"].shape == (64,) and (item["labels"] == item["input_ids"]).all()


def test_the_token_cache_is_reused_only_for_the_same_corpus_and_tokenizer(tmp_path, caplog):
    from hpcrun.tasks.text import stream_key, token_stream

    corpus = tmp_path / "c.txt"
    corpus.write_text(load_corpus("shakespeare")[0][:50_000])
    docs = load_corpus(str(corpus))
    tok = train_bpe(docs, 400)
    cache = tmp_path / "tokens.safetensors"
    key = stream_key(str(corpus), tok)
    first = token_stream(docs, tok, cache, key, write=True)
    assert cache.exists()
    # Same key: the cached stream, not the documents (given as nothing here), is what comes back.
    assert (token_stream([], tok, cache, key) == first).all()
    # Another tokenizer, or a changed corpus file, is another key: tokenized again.
    assert stream_key(str(corpus), train_bpe(docs, 300)) != key
    corpus.write_text(corpus.read_text() + "more")
    assert stream_key(str(corpus), tok) != key
    assert len(token_stream([], tok, cache, "other")) == 0  # EOS-free empty stream: it did not use the cache
    # A damaged cache is only a slower start.
    cache.write_bytes(b"not safetensors")
    assert (token_stream(docs, tok, cache, key) == first).all()
    assert "ignoring the token cache" in caplog.text


def test_a_trained_bpe_is_shared_through_the_cache_and_each_run_keeps_its_own_copy(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from hpcrun.tasks.text import tokenizer_for

    caplog.set_level("INFO", logger="hpcrun")
    monkeypatch.setenv("HPCRUN_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(load_corpus("shakespeare")[0][:50_000])
    cfg = SimpleNamespace(data=SimpleNamespace(tokenizer="bpe", corpus=str(corpus), vocab_size=400))
    docs = load_corpus(str(corpus))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tokenizer_for(cfg, docs, tmp_path / "a", is_main=True)
    assert "trained a 400-token" in caplog.text
    caplog.clear()
    second = tokenizer_for(cfg, [], tmp_path / "b", is_main=True)  # no documents: it cannot have trained
    assert "from " + str(tmp_path / "cache" / "tokenizers") in caplog.text
    assert second.get_vocab() == first.get_vocab()
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").exists() and (tmp_path / "b" / "tokenizer").is_dir()
    # Another vocabulary size is another tokenizer.
    caplog.clear()
    tokenizer_for(SimpleNamespace(data=SimpleNamespace(tokenizer="bpe", corpus=str(corpus), vocab_size=300)), docs,
                  tmp_path / "b2", is_main=False)
    assert "trained a 300-token" in caplog.text
