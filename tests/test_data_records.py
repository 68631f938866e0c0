"""Reading every supported data format, and every bad-input rule of data/records.py."""
from __future__ import annotations

import csv
import json

import pytest

from sqsd_fast.data.records import FieldNames, Record, load_raw, normalize_rows, read_records

ROWS = [
    {"instruction": "Name a fruit.", "context": "", "response": "An apple."},
    {"instruction": "Summarize.", "context": "Cats sleep a lot.", "response": "Cats nap."},
    {"instruction": "Count to three.", "context": "", "response": "One, two, three."},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _expected_users():
    return ["Name a fruit.", "Summarize.\nCats sleep a lot.", "Count to three."]


def _check(records):
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.kind for r in records] == ["instruction"] * 3
    assert [r.prompt_messages[0]["content"] for r in records] == _expected_users()
    assert [r.response for r in records] == [row["response"] for row in ROWS]


def test_json_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(ROWS))
    raw = load_raw(p)
    assert raw.fmt == "json" and raw.rows == ROWS
    _check(read_records(p))


def test_json_columns(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}))
    _check(read_records(p))


def test_jsonl_skips_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]))
    _check(read_records(p))


def test_csv(tmp_path):
    _check(read_records(_write_csv(tmp_path / "d.csv", ROWS)))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    raw = load_raw(p)
    assert raw.fmt == "parquet"
    _check(read_records(p))


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "single"))
    _check(read_records(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    _check(read_records(tmp_path / "dd"))                   # "train" by default
    assert len(read_records(tmp_path / "dd", split="test")) == 1
    with pytest.raises(ValueError, match="no split 'dev'"):
        read_records(tmp_path / "dd", split="dev")
    _check(read_records(ds))                                # in-memory Dataset


def test_alpaca_field_names_input_output():
    rows = [{"instruction": "Add.", "input": "1 and 2", "output": "3"},
            {"instruction": "Greet.", "input": "", "output": "Hello."}]
    recs = normalize_rows(rows)
    assert recs[0].prompt_messages[0]["content"] == "Add.\n1 and 2"
    assert recs[1].prompt_messages[0]["content"] == "Greet."
    assert [r.response for r in recs] == ["3", "Hello."]


def test_blank_context_is_whitespace_or_missing():
    rows = [{"instruction": "A", "context": "  \n", "response": "x"},
            {"instruction": "B", "context": None, "response": "y"},
            {"instruction": "C", "response": "z"}]
    assert [r.prompt_messages[0]["content"] for r in normalize_rows(rows)] == ["A", "B", "C"]


def test_configurable_field_names():
    rows = [{"q": "Why?", "ctx": "Because.", "a": "Yes."}]
    fields = FieldNames(instruction="q", context=("ctx",), response=("a",))
    rec = normalize_rows(rows, fields)[0]
    assert rec.prompt_messages == ({"role": "user", "content": "Why?\nBecause."},)
    assert rec.response == "Yes."


def test_chat_last_assistant_turn_is_the_response():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"},
            {"role": "assistant", "content": "Bye."}, {"role": "user", "content": "ignored"}]
    rec = normalize_rows([{"messages": msgs}])[0]
    assert rec.kind == "chat"
    assert rec.response == "Bye."
    assert list(rec.prompt_messages) == msgs[:4]
    assert rec.snippet() == "Bye?"


def test_chat_from_csv_json_text(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    p = _write_csv(tmp_path / "c.csv", [{"messages": json.dumps(msgs)}])
    assert read_records(p)[0].response == "Hello"


def test_pretokenized_used_as_is(tmp_path):
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}]
    rec = normalize_rows(rows)[0]
    assert rec.kind == "pretokenized"
    assert rec.input_ids == (5, 6, 7, 8) and rec.labels == (-100, -100, 7, 8)
    p = _write_csv(tmp_path / "p.csv", [{k: json.dumps(v) for k, v in rows[0].items()}])
    assert read_records(p)[0].input_ids == (5, 6, 7, 8)


# ------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("content, match", [
    ("[{\"instruction\": ", "not valid JSON"),
    ("42", "list of records or an object of columns"),
    ("{\"instruction\": [\"a\", \"b\"], \"response\": [\"x\"]}", "different lengths"),
    ("{\"instruction\": \"a\"}", "must map column names to lists"),
    ("[1, 2]", "record 0 is a int"),
    ("[]", "empty"),
])
def test_bad_json(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        read_records(p)
    assert "bad.json" in str(err.value)


def test_bad_jsonl_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not valid JSON"):
        read_records(p)
    p.write_text("[1]\n")
    with pytest.raises(ValueError, match="line 1 is a list"):
        read_records(p)


def test_missing_file_unknown_extension_and_plain_directory(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl: data file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"unknown data file extension '.txt'"):
        read_records(tmp_path / "d.txt")
    with pytest.raises(ValueError, match="not a dataset saved with"):
        read_records(tmp_path)


def test_unreadable_parquet_and_binary_text(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="x.parquet: not a readable Parquet file"):
        read_records(p)
    q = tmp_path / "x.jsonl"
    q.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="x.jsonl: not UTF-8"):
        read_records(q)


def test_empty_files(tmp_path):
    for name, text in [("e.jsonl", "\n\n"), ("e.csv", "instruction,response\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name}: the dataset is empty"):
            read_records(tmp_path / name)


@pytest.mark.parametrize("row, match", [
    ({"prompt": "x", "response": "y"}, r"record 1: no 'instruction' field \(fields present: 'prompt', 'response'\)"),
    ({"instruction": "x"}, r"record 1: no response field \('response' or 'output'"),
    ({"instruction": 3, "response": "y"}, r"record 1: field 'instruction' must be text"),
    ({"input_ids": [1, 2]}, r"record 1: has 'input_ids' but no 'labels'"),
    ({"input_ids": [1, 2], "labels": [1]}, r"record 1: 'input_ids' has 2 tokens but 'labels' has 1"),
    ({"input_ids": [1, "a"], "labels": [1, 2]}, r"record 1: input_ids\[1\] = 'a' is not an integer"),
    ({"input_ids": "[1, 2", "labels": [1, 2]}, r"record 1: field 'input_ids' is text that is not a JSON list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"record 1: 'messages' has no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, r"record 1: 'messages' starts with the assistant"),
    ({"messages": [{"content": "hi"}]}, r"record 1: messages\[0\] must be an object with 'role'"),
    ({"messages": "hello"}, r"record 1: field 'messages' is text that is not a JSON list"),
])
def test_bad_records_name_file_index_and_field(tmp_path, row, match):
    p = _write_jsonl(tmp_path / "train.jsonl", [ROWS[0], row])
    with pytest.raises(ValueError, match=match) as err:
        read_records(p)
    assert str(err.value).startswith(str(p))


def test_limit_reads_only_the_first_rows(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", ROWS + [{"bad": 1}])
    assert len(read_records(p, limit=3)) == 3


def test_snippet_is_short_and_single_line():
    rec = Record(0, "instruction", ({"role": "user", "content": "word\n" * 40},), "r")
    assert len(rec.snippet(30)) == 30 and "\n" not in rec.snippet(30)


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        if name == "owner/missing":
            raise FileNotFoundError("Dataset 'owner/missing' doesn't exist on the Hub\nmore")
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    raw = load_raw("owner/dolly", split="train")
    assert raw.fmt == "hub" and raw.path is None and len(raw.rows) == 3
    _check(read_records("owner/dolly"))
    with pytest.raises(ValueError, match=r"owner/missing: no such data file, and loading it "
                                         r"as a hub dataset failed \(Dataset 'owner/missing'"):
        read_records("owner/missing")
    assert calls == [("owner/dolly", "train"), ("owner/dolly", "train"),
                     ("owner/missing", "train")]
    with pytest.raises(ValueError, match="data file not found"):
        read_records("owner/name/extra")                   # not a hub id: a missing path
