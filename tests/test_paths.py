import errno
import os
from pathlib import Path

import pytest

from llmshrink.config import settings_difference
from llmshrink.errors import UserError
from llmshrink.paths import atomic_dir, atomic_file, claim_output, read_record, remove_stale_temporaries


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_claim_output_refuses_what_would_destroy_something(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "file.gguf").write_text("x")
    for out, match in [(model, "is the input"), (model / "q", "is inside the input"), (tmp_path, "holds the input"),
                       (tmp_path / "notes", "exists: pass --overwrite"), (tmp_path / "file.gguf", "is a file"),
                       (tmp_path / "a" / "b", "does not exist")]:
        with pytest.raises(UserError, match=match):
            claim_output(out, inputs=(model,))
    with pytest.raises(UserError, match="is a folder"):
        claim_output(tmp_path / "notes", folder=False, overwrite=True)
    with pytest.raises(UserError, match="is the input"):  # even with --overwrite
        claim_output(model, inputs=(model,), overwrite=True)
    assert claim_output(tmp_path / "notes", inputs=(model,), overwrite=True) == tmp_path / "notes"
    assert claim_output(tmp_path / "notes", resumes=True) == tmp_path / "notes"
    assert claim_output(tmp_path / "new", inputs=(model, "smollm2-135m")) == tmp_path / "new"
    with pytest.raises(UserError, match="GB free and the output needs about"):
        claim_output(tmp_path / "new", need_bytes=1 << 60)
    assert not (tmp_path / "new").exists()


def test_an_input_that_does_not_exist_yet_still_counts_when_it_is_a_path(tmp_path):
    with pytest.raises(UserError, match="holds the input"):
        claim_output(tmp_path / "run", inputs=(str(tmp_path / "run" / "0-quantize"),))


def test_claim_output_refuses_an_unwritable_parent(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real(p, mode, **kw))
    with pytest.raises(UserError, match="cannot be written"):
        claim_output(tmp_path / "out")


def test_atomic_dir_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert _tree(out) == {"old.txt": b"old"} and [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _tree(out) == {"new.txt": b"new"} and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_full_disk_is_named_and_the_previous_output_stays(tmp_path):
    out = tmp_path / "m.gguf"
    out.write_text("previous")
    full = "disk filled up while writing .*nothing under that name was changed"
    with pytest.raises(UserError, match=full), atomic_file(out) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert out.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "a").write_text("a")
    with pytest.raises(UserError, match="disk filled up"), atomic_dir(folder) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device")
    assert _tree(folder) == {"a": b"a"}


def test_read_record_names_a_damaged_file(tmp_path):
    (tmp_path / "r.json").write_text('{"a": 1')
    with pytest.raises(UserError, match="is damaged"):
        read_record(tmp_path / "r.json")
    (tmp_path / "r.json").write_text("[1]")
    with pytest.raises(UserError, match="not a JSON object"):
        read_record(tmp_path / "r.json")


def test_settings_difference_names_the_changed_keys():
    old = {"model": "m", "calib": {"nsamples": 128, "seqlen": 512}, "bits": 4}
    new = {"model": "m", "calib": {"nsamples": 64, "seqlen": 512}, "bits": 3}
    assert settings_difference(old, new) == "bits: 4 -> 3; calib.nsamples: 128 -> 64"
    assert settings_difference(old, old) == ""


def test_a_killed_runs_temporaries_are_removed_by_the_next_write(tmp_path):
    out = tmp_path / "m.gguf"
    dead = tmp_path / ".m.gguf.tmp-999999999-abc.part"  # no such process
    live = tmp_path / f".m.gguf.tmp-{os.getpid()}-abc.part"  # a writer still at work
    other = tmp_path / ".m.gguf2.tmp-999999999-abc.part"  # another output's
    for p in (dead, live, other):
        p.write_text("partial")
    with atomic_file(out) as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])


def test_a_run_killed_between_the_two_renames_gets_its_old_folder_back(tmp_path):
    out = tmp_path / "q"
    aside = tmp_path / ".q.old-999999999-x"
    (aside / "q").mkdir(parents=True)
    (aside / "q" / "a").write_text("old")
    (tmp_path / ".q.tmp-999999999-y").mkdir()  # the new folder, complete or not: never renamed
    remove_stale_temporaries(out)
    assert _tree(tmp_path) == {"q/a": b"old"}
