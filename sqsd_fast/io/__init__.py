"""Output files (JSONL, CSV, Parquet), atomic writes and resume checkpoints."""
from sqsd_fast.io.atomic import atomic_path, atomic_write_text
from sqsd_fast.io.checkpoint import ResumeCheckpoint, path_fingerprint, sidecar_paths
from sqsd_fast.io.writers import (DATA_FORMATS, OUTPUT_FORMATS, PROJECT_COLUMNS, SCORE_COLUMNS,
                                  output_format, read_rows, write_rows)

__all__ = ["DATA_FORMATS", "OUTPUT_FORMATS", "PROJECT_COLUMNS", "ResumeCheckpoint",
           "SCORE_COLUMNS", "atomic_path", "atomic_write_text", "output_format",
           "path_fingerprint", "read_rows", "sidecar_paths", "write_rows"]
