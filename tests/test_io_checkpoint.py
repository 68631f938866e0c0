"""Resume sidecars: fingerprint checks, durable appends, torn last lines."""
from __future__ import annotations

import json

import pytest

from sqsd_fast.io.checkpoint import ResumeCheckpoint, path_fingerprint, sidecar_paths

FP = {"command": "score", "metric": "cosine", "max_length": 1024, "data": {"digest": "sha256:1"}}


def _rows(*indices):
    return [{"index": i, "sqsd": i / 10, "status": "ok"} for i in indices]


def test_fresh_run_appends_and_finish_removes_sidecars(tmp_path):
    out = tmp_path / "s.jsonl"
    ck = ResumeCheckpoint(out, FP)
    assert ck.start(resume=False) == {}
    ck.append(_rows(3, 1))
    ck.append([{"index": 0, "sqsd": float("nan"), "status": "zero_update"}])
    partial, manifest = sidecar_paths(out)
    assert json.loads(manifest.read_text())["fingerprint"] == FP
    assert [json.loads(x)["index"] for x in partial.read_text().splitlines()] == [3, 1, 0]
    ck.close()
    again = ResumeCheckpoint(out, dict(FP))
    done = again.start(resume=True)
    assert sorted(done) == [0, 1, 3] and done[0]["sqsd"] is None
    again.finish()
    assert not partial.exists() and not manifest.exists()


def test_existing_sidecars_refused_without_resume(tmp_path):
    out = tmp_path / "s.csv"
    ResumeCheckpoint(out, FP).start(resume=False)
    with pytest.raises(ValueError, match="rerun with --resume to continue it, or delete them"):
        ResumeCheckpoint(out, FP).check(resume=False)


def test_different_fingerprint_refused_with_the_differences(tmp_path):
    out = tmp_path / "s.jsonl"
    ResumeCheckpoint(out, FP).start(resume=False)
    other = dict(FP, metric="dot", data={"digest": "sha256:2"})
    with pytest.raises(ValueError) as err:
        ResumeCheckpoint(out, other).check(resume=True)
    msg = str(err.value)
    assert "cannot resume" in msg and "metric: \"cosine\" then, \"dot\" now" in msg
    assert "data.digest" in msg and "delete" in msg


def test_torn_last_line_is_dropped_and_cut(tmp_path):
    out = tmp_path / "s.jsonl"
    ck = ResumeCheckpoint(out, FP)
    ck.start(resume=False)
    ck.append(_rows(0, 1))
    ck.close()
    partial, _ = sidecar_paths(out)
    with open(partial, "a") as f:
        f.write('{"index": 2, "sqsd"')               # killed in the middle of a write
    done = ResumeCheckpoint(out, FP).check(resume=True)
    assert sorted(done) == [0, 1]
    assert partial.read_text().count("\n") == 2 and partial.read_text().endswith("\n")


def test_damaged_middle_line_and_missing_manifest(tmp_path):
    out = tmp_path / "s.jsonl"
    ResumeCheckpoint(out, FP).start(resume=False)
    partial, manifest = sidecar_paths(out)
    partial.write_text('{"index": 0}\nnot json\n{"index": 1}\n')
    with pytest.raises(ValueError, match="line 2 is damaged"):
        ResumeCheckpoint(out, FP).check(resume=True)
    manifest.unlink()
    with pytest.raises(ValueError, match="has no manifest"):
        ResumeCheckpoint(out, FP).check(resume=True)


def test_path_fingerprint_changes_with_content(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "w.bin").write_bytes(b"\x00" * 10)
    a = path_fingerprint(d)
    (d / ".cache").write_text("ignored")
    assert path_fingerprint(d) == a
    (d / "w.bin").write_bytes(b"\x01" * 10)
    assert path_fingerprint(d)["digest"] != a["digest"]
    assert path_fingerprint(tmp_path / "missing")["digest"] is None


def test_adapter_config_digest_ignores_the_order_peft_wrote_its_sets_in(tmp_path):
    """peft writes target_modules (a set) in hash-seed order: identical trainings in two
    processes must still fingerprint alike; a different set or rank must not."""
    import json

    def adapter(name, config):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps(config))
        (d / "adapter_model.safetensors").write_bytes(b"\x07" * 16)
        return path_fingerprint(d)["digest"]

    base = {"r": 8, "lora_alpha": 16, "peft_type": "LORA"}
    one = adapter("one", {**base, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    two = adapter("two", {"target_modules": ["down_proj", "q_proj", "v_proj"], **base})  # keys moved too
    assert one == two
    assert adapter("three", {**base, "target_modules": ["q_proj", "v_proj"]}) != one
    assert adapter("four", {**base, "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}) != one
    # Not JSON: the bytes decide, as for any other file.
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "adapter_config.json").write_text("not json")
    assert path_fingerprint(tmp_path / "odd")["digest"].startswith("dir-sha256:")
