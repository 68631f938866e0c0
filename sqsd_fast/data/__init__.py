"""Reading fine-tuning data, tokenizing it (docs/METHOD.md §2) and batching it."""
from sqsd_fast.data.records import FieldNames, RawData, Record, load_raw, normalize_rows, read_records
from sqsd_fast.data.tokenize import TokenizedSample, count_truncated, tokenize_records

__all__ = ["FieldNames", "RawData", "Record", "TokenizedSample", "count_truncated",
           "load_raw", "normalize_rows", "read_records", "tokenize_records"]
