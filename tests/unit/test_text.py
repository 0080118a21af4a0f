"""The corpus (every kind of file datasets reads), the memory-mapped token cache, and the offline tokenizer."""

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcrun.errors import ConfigError
from hpcrun.resources import corpus_path
from hpcrun.tasks.sources import check_corpus, resolve
from hpcrun.tasks.text import train_bpe
from hpcrun.tasks.tokens import TokenBlocks, corpus_blocks, open_stream, shared_folder, stream_key, texts


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test its own hpcrun cache (token streams and tokenizers are shared through it)."""
    monkeypatch.setenv("HPCRUN_CACHE_DIR", str(tmp_path / "cache"))


def _shakespeare(n: int) -> str:
    with gzip.open(corpus_path("shakespeare"), "rt", encoding="utf-8") as f:
        return f.read(n)


def _data(corpus, **kw):
    base = dict(corpus=str(corpus), text_field="text", format="text", messages_field="messages", num_proc=None,
                seq_len=32, eval_fraction=0.1)
    return SimpleNamespace(data=SimpleNamespace(**{**base, **kw}))


def test_the_builtin_corpus_is_real_english_shipped_with_the_package():
    text = "".join(texts(resolve("shakespeare"), "text"))
    assert len(text) > 1_000_000
    assert "To be, or not to be" in text
    words = text.lower().split()
    assert sum(w in {"the", "and", "of", "to"} for w in words) / len(words) > 0.05


def test_a_folder_corpus_reads_txt_and_gz_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write("first")
    (tmp_path / "skip.md").write_text("not text")
    assert [p.name for p in resolve(str(tmp_path)).files] == ["a.txt.gz", "b.txt"]
    assert list(texts(resolve(str(tmp_path)), "text")) == ["first", "second"]


def test_corpus_kinds_and_bad_corpora_name_the_key(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "d.csv").write_text("text\na\n")
    assert resolve(str(tmp_path / "d.jsonl")).kind == "json" and resolve(str(tmp_path / "d.csv")).kind == "csv"
    assert resolve("someone/dataset").kind == "hub"
    with pytest.raises(ConfigError, match="data.corpus=.*a folder of one kind of file"):
        resolve(str(tmp_path))
    with pytest.raises(ConfigError, match="data.corpus=.*nope.*expected an existing file or folder"):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "x.docx").write_text("")
    with pytest.raises(ConfigError, match="data.corpus=.*x.docx"):
        resolve(str(tmp_path / "x.docx"))


def test_a_data_file_without_the_text_field_is_refused_on_the_login_node_naming_the_key(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "a", "id": 1}\n')
    with pytest.raises(ConfigError, match=r"data.text_field='text' is invalid: expected a column of d.jsonl "
                                          r"\(it has: body, id\)"):
        check_corpus(_data(tmp_path / "d.jsonl").data)
    check_corpus(_data(tmp_path / "d.jsonl", text_field="body").data)
    with pytest.raises(ConfigError, match="data.messages_field='messages'"):
        check_corpus(_data(tmp_path / "d.jsonl", format="chat").data)


def test_bpe_training_is_deterministic_and_round_trips_text():
    lines = _shakespeare(200_000).splitlines(keepends=True)
    a, b = train_bpe(lines, 1000), train_bpe(lines, 1000)
    assert a.get_vocab() == b.get_vocab()
    sample = "Now is the winter of our discontent, café — 1603!"
    assert a.decode(a(sample)["input_ids"]) == sample  # byte-level: nothing is unknown


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet", "saved"])
def test_every_kind_of_corpus_gives_the_same_token_stream(tmp_path, kind):
    docs = [_shakespeare(30_000)[i * 10_000:(i + 1) * 10_000] for i in range(3)]
    tok = train_bpe("".join(docs).splitlines(keepends=True), 400)
    folder = tmp_path / "data"
    folder.mkdir()
    if kind == "txt":
        for i, d in enumerate(docs):
            (folder / f"{i}.txt").write_text(d)
    else:
        import datasets

        ds = datasets.Dataset.from_dict({"text": docs, "n": [0, 1, 2]})
        {"jsonl": lambda: ds.to_json(str(folder / "d.jsonl")), "csv": lambda: ds.to_csv(str(folder / "d.csv")),
         "parquet": lambda: ds.to_parquet(str(folder / "d.parquet")),
         "saved": lambda: ds.save_to_disk(str(folder))}[kind]()
    train, evaluation = corpus_blocks(_data(folder), tok, tmp_path / "tokens")
    ids = [int(t) for b in range(len(train)) for t in train[b]["input_ids"]]
    stream = []  # each document tokenized line by line, then EOS
    for d in docs:
        stream += [t for line in d.splitlines(keepends=True) for t in tok(line)["input_ids"]] + [tok.eos_token_id]
    assert ids == stream[:len(ids)] and len(ids) > 0.8 * len(stream)  # the train blocks are the stream's head
    assert train[0]["input_ids"].shape == (32,) and (train[0]["labels"] == train[0]["input_ids"]).all()
    assert len(evaluation) > 0


def test_the_token_cache_is_memory_mapped_and_reused_only_for_the_same_files_and_tokenizer(tmp_path):
    import numpy as np

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": _shakespeare(20_000)[i::4]}) + "\n" for i in range(4)))
    tok = train_bpe(_shakespeare(20_000).splitlines(keepends=True), 400)
    folder = tmp_path / "tokens"
    corpus_blocks(_data(corpus), tok, folder)
    key = stream_key(resolve(str(corpus)), "text", tok)
    stream = open_stream(folder, key)
    assert isinstance(stream, np.memmap) and json.loads((folder / "meta.json").read_text())["documents"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work files left
    assert stream_key(resolve(str(corpus)), "text", train_bpe(["other text\n"] * 50, 300)) != key
    assert stream_key(resolve(str(corpus)), "body", tok) != key
    corpus.write_text(corpus.read_text() + json.dumps({"text": "more"}) + "\n")
    assert stream_key(resolve(str(corpus)), "text", tok) != key
    assert open_stream(folder, "other") is None


def test_token_blocks_index_a_range_of_the_stream():
    import numpy as np

    blocks = TokenBlocks(np.arange(100, dtype=np.uint32), 8, start=10, end=50)
    assert len(blocks) == 5 and blocks[1]["input_ids"].tolist() == list(range(18, 26))
    with pytest.raises(IndexError):
        blocks[5]


def test_a_trained_bpe_is_shared_through_the_cache_and_each_run_keeps_its_own_copy(tmp_path, monkeypatch, caplog):
    from hpcrun.tasks.text import tokenizer_for

    caplog.set_level("INFO", logger="hpcrun")
    monkeypatch.setenv("HPCRUN_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(_shakespeare(50_000))
    cfg = SimpleNamespace(data=SimpleNamespace(tokenizer="bpe", corpus=str(corpus), vocab_size=400, text_field="text"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tokenizer_for(cfg, tmp_path / "a", is_main=True)
    assert "trained a 400-token" in caplog.text
    caplog.clear()
    second = tokenizer_for(cfg, tmp_path / "b", is_main=True)
    assert "from " + str(tmp_path / "cache" / "tokenizers") in caplog.text
    assert second.get_vocab() == first.get_vocab()
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").exists() and (tmp_path / "b" / "tokenizer").is_dir()
    # Another vocabulary size is another tokenizer.
    caplog.clear()
    cfg.data.vocab_size = 300
    tokenizer_for(cfg, tmp_path / "b2", is_main=False)
    assert "trained a 300-token" in caplog.text


def _corpus_and_tokenizer(folder, n=40_000):
    corpus = folder / "c.txt"
    corpus.write_text(_shakespeare(n))
    return corpus, train_bpe(_shakespeare(n).splitlines(keepends=True), 400)


def test_a_token_stream_is_shared_through_the_cache_and_each_run_keeps_its_own(tmp_path, caplog):
    import shutil

    caplog.set_level("INFO", logger="hpcrun")
    corpus, tok = _corpus_and_tokenizer(tmp_path)
    key = stream_key(resolve(str(corpus)), "text", tok)
    first, _ = corpus_blocks(_data(corpus), tok, tmp_path / "a" / "tokens")
    assert "tokenized 1 documents" in caplog.text
    assert shared_folder(key).parent == tmp_path / "cache" / "tokens"
    assert open_stream(shared_folder(key), key) is not None
    caplog.clear()
    second, _ = corpus_blocks(_data(corpus), tok, tmp_path / "b" / "tokens")
    assert "tokenized" not in caplog.text and f"from {shared_folder(key)}" in caplog.text
    assert [first[i]["input_ids"].tolist() for i in range(len(first))] == \
        [second[i]["input_ids"].tolist() for i in range(len(second))]
    # Hard links, not copies; the run's own names outlive the cache; no work folder is left anywhere.
    ids = [tmp_path / r / "tokens" / "ids.u32" for r in "ab"]
    assert ids[0].stat().st_ino == ids[1].stat().st_ino == (shared_folder(key) / "ids.u32").stat().st_ino
    assert not [p for d in (tmp_path / "b", shared_folder(key).parent) for p in d.iterdir() if p.name.startswith(".")]
    shutil.rmtree(tmp_path / "cache")
    assert len(open_stream(tmp_path / "b" / "tokens", key)) == len(open_stream(tmp_path / "a" / "tokens", key))

    # A changed corpus is another stream, tokenized and shared in turn.
    corpus.write_text(_shakespeare(30_000))
    caplog.clear()
    corpus_blocks(_data(corpus), tok, tmp_path / "b" / "tokens")
    new_key = stream_key(resolve(str(corpus)), "text", tok)
    assert "tokenized 1 documents" in caplog.text and open_stream(tmp_path / "b" / "tokens", new_key) is not None
    assert open_stream(shared_folder(new_key), new_key) is not None


def test_a_stream_another_run_shared_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    import shutil

    from hpcrun.tasks import tokens

    corpus, tok = _corpus_and_tokenizer(tmp_path)
    key = stream_key(resolve(str(corpus)), "text", tok)
    corpus_blocks(_data(corpus), tok, tmp_path / "a" / "tokens")  # run a tokenized and shared first
    shutil.copytree(tmp_path / "a" / "tokens", tmp_path / "b" / "tokens")  # run b tokenized at the same time
    entry = shared_folder(key) / "ids.u32"
    before = entry.stat().st_ino
    looked = []

    def empty_when_b_looked(folder, k):  # b found the cache empty, as it was when it started
        looked.append(folder)
        return None if len(looked) == 1 else open_stream(folder, k)

    monkeypatch.setattr(tokens, "open_stream", empty_when_b_looked)
    tokens.share_stream(tmp_path / "b" / "tokens", key)
    assert len(looked) == 2  # its publish found a's entry, which is whole: kept
    assert entry.stat().st_ino == before == (tmp_path / "a" / "tokens" / "ids.u32").stat().st_ino
    assert not [p for p in shared_folder(key).parent.iterdir() if p.name.startswith(".")]


def test_a_broken_cached_stream_is_made_again_and_replaced(tmp_path, caplog):
    caplog.set_level("INFO", logger="hpcrun")
    corpus, tok = _corpus_and_tokenizer(tmp_path)
    key = stream_key(resolve(str(corpus)), "text", tok)
    corpus_blocks(_data(corpus), tok, tmp_path / "a" / "tokens")
    cached = shared_folder(key) / "ids.u32"
    cached.unlink()  # a cache cleaned file by file; then one cut short
    (shared_folder(key) / "ids.u32").write_bytes(b"\0" * 40)
    caplog.clear()
    train, _ = corpus_blocks(_data(corpus), tok, tmp_path / "b" / "tokens")
    assert "tokenized 1 documents" in caplog.text and len(train) > 0
    assert len(open_stream(shared_folder(key), key)) == len(open_stream(tmp_path / "a" / "tokens", key))
    assert (tmp_path / "a" / "tokens" / "ids.u32").stat().st_size > 40  # the first run's own file is untouched


def test_across_file_systems_the_cache_is_copied_from_but_never_copied_into(tmp_path, monkeypatch, caplog):
    import os
    import tempfile

    other = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else None
    if other is None or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    try:
        caplog.set_level("INFO", logger="hpcrun")
        corpus, tok = _corpus_and_tokenizer(tmp_path)
        key = stream_key(resolve(str(corpus)), "text", tok)
        corpus_blocks(_data(corpus), tok, tmp_path / "a" / "tokens")  # the cache (under tmp_path) links it
        caplog.clear()
        corpus_blocks(_data(corpus), tok, other / "b" / "tokens")  # a run on the other file system: a copy
        assert "tokenized" not in caplog.text and f"from {shared_folder(key)}" in caplog.text
        assert (other / "b" / "tokens" / "ids.u32").stat().st_ino != (shared_folder(key) / "ids.u32").stat().st_ino

        monkeypatch.setenv("HPCRUN_CACHE_DIR", str(tmp_path / "cache2"))  # a cache away from the run's files
        caplog.clear()
        corpus_blocks(_data(corpus), tok, other / "c" / "tokens")
        assert "tokenized 1 documents" in caplog.text and "not shared: hpcrun's cache" in caplog.text
        assert open_stream(shared_folder(key), key) is None
        assert not [p for p in shared_folder(key).parent.iterdir()]  # and no copy begun either
    finally:
        import shutil

        shutil.rmtree(other, ignore_errors=True)


def test_another_nodes_first_process_reads_the_cached_stream_without_writing(tmp_path, caplog):
    caplog.set_level("INFO", logger="hpcrun")
    corpus, tok = _corpus_and_tokenizer(tmp_path)
    corpus_blocks(_data(corpus), tok, tmp_path / "a" / "tokens")
    caplog.clear()
    train, _ = corpus_blocks(_data(corpus), tok, tmp_path / "b" / "tokens", write=False)
    assert "tokenized" not in caplog.text and len(train) > 0 and not (tmp_path / "b").exists()


def test_the_cache_drops_streams_no_run_links_to_and_what_killed_copies_left(tmp_path):
    import time

    from hpcrun.tasks.tokens import UNUSED_DAYS, _prune

    corpus, tok = _corpus_and_tokenizer(tmp_path, 20_000)
    corpus_blocks(_data(corpus), tok, tmp_path / "held" / "tokens")
    corpus.write_text(_shakespeare(10_000))
    corpus_blocks(_data(corpus), tok, tmp_path / "gone" / "tokens")
    import shutil

    shutil.rmtree(tmp_path / "gone")
    parent = tmp_path / "cache" / "tokens"
    (parent / ".abc.x1.tmp").mkdir()  # a killed copy's folder
    assert len(list(parent.iterdir())) == 3
    _prune(parent, time.time() + 3600)  # an hour later: nothing is old enough
    assert len(list(parent.iterdir())) == 3
    _prune(parent, time.time() + (UNUSED_DAYS + 1) * 86400)
    (left,) = parent.iterdir()  # only the stream a run still links to
    assert (left / "ids.u32").stat().st_ino == (tmp_path / "held" / "tokens" / "ids.u32").stat().st_ino


def test_a_cache_that_cannot_be_written_costs_only_a_warning(tmp_path, monkeypatch, caplog):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("HPCRUN_CACHE_DIR", str(tmp_path / "not-a-folder"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(_shakespeare(20_000))
    tok = train_bpe(_shakespeare(20_000).splitlines(keepends=True), 300)
    train, _ = corpus_blocks(_data(corpus), tok, tmp_path / "run" / "tokens")
    assert len(train) > 0 and "could not keep the token stream in" in caplog.text
