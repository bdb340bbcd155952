"""Finding files: folders, globs, list files, URIs (file://, an fsspec filesystem), scopes for prune."""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec
import pytest

from omniret.errors import MediaError
from omniret.ingest.discover import discover, glob_regex, locate, split_glob
from omniret.ingest.fetch import local_file


@pytest.fixture
def tree(tmp_path):
    for rel in ["a.png", "b.jpg", "sub/c.png", "sub/deep/d.pdf", ".hidden.png", ".git/x.png", "sub/.cache/y.png"]:
        path = tmp_path / "root" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
    return tmp_path / "root"


def names(found, root):
    return [f.uri[len(str(root)) + 1:] for f in found.files]


def test_a_folder_is_listed_recursively_without_hidden_files(tree):
    found = discover([str(tree)])
    assert names(found, tree) == ["a.png", "b.jpg", "sub/c.png", "sub/deep/d.pdf"]
    assert found.files[0].size == len(b"a.png") and not found.errors
    assert len(discover([str(tree)], include_hidden=True).files) == 7


def test_globs_stay_in_one_folder_unless_double_star(tree):
    assert names(discover([f"{tree}/*.png"]), tree) == ["a.png"]
    assert names(discover([f"{tree}/**/*.png"]), tree) == ["a.png", "sub/c.png"]
    assert names(discover([f"{tree}/sub/*/d.pdf"]), tree) == ["sub/deep/d.pdf"]
    assert names(discover([f"{tree}/[ab].*"]), tree) == ["a.png", "b.jpg"]
    (tree / "[2020] trip").mkdir()
    (tree / "[2020] trip" / "e.png").write_bytes(b"e")
    assert names(discover([f"{tree}/[2020] trip"]), tree) == ["[2020] trip/e.png"]  # a real name, not a glob
    assert glob_regex("/x/**/*.png").match("/x/a/b/c.png") and not glob_regex("/x/*.png").match("/x/a/c.png")
    assert split_glob("/x/y/*.png") == ("/x/y", "*.png") and split_glob("/x/y") == ("/x/y", None)


def test_list_files_uris_repeats_and_missing_sources(tree, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# media\nroot/a.png\n\n{tree}/sub/c.png\nfile://{tree}/b.jpg\n")
    found = discover([f"@{listing}", str(tree / "a.png"), str(tmp_path / "nope"), f"@{tmp_path}/none.txt"])
    assert names(found, tree) == ["a.png", "b.jpg", "sub/c.png"]  # a.png named twice, listed once
    assert [source for source, _ in found.errors] == [str(tmp_path / "nope"), f"@{tmp_path}/none.txt"]
    assert "not found" in found.errors[0][1] and "list file" in found.errors[1][1]


def test_scopes_say_what_prune_may_touch(tree):
    folder, glob, single = discover([str(tree), f"{tree}/*.png", str(tree / "b.jpg")]).scopes
    assert folder.covers(f"{tree}/gone/z.png") and not folder.covers(f"{tree}2/z.png")
    assert glob.covers(f"{tree}/gone.png") and not glob.covers(f"{tree}/gone.jpg")
    assert not glob.covers(f"{tree}/sub/gone.png")
    assert single.covers(str(tree / "b.jpg")) and not single.covers(str(tree / "a.png"))


def test_fsspec_filesystems_are_listed_and_copied_locally():
    fs = fsspec.filesystem("memory")
    fs.pipe({"/bucket/media/one.png": b"\x89PNG\r\n\x1a\n" + b"1" * 100, "/bucket/media/x/two.pdf": b"%PDF-1.7"})
    try:
        found = discover(["memory://bucket/media"])
        assert [f.uri for f in found.files] == ["memory://bucket/media/one.png", "memory://bucket/media/x/two.pdf"]
        assert locate(found.files[0].uri).path == "/bucket/media/one.png"
        assert found.scopes[0].covers("memory://bucket/media/gone.png")
        with local_file(found.files[0].uri, max_bytes=1000) as src:
            data = Path(src.path).read_bytes()
            assert src.kind == "image" and src.sha256 == hashlib.sha256(data).hexdigest() and len(data) == 108
        with pytest.raises(MediaError, match="too large"), local_file(found.files[0].uri, max_bytes=50):
            pass
    finally:
        fs.rm("/bucket", recursive=True)


def test_local_files_are_hashed_in_place_and_changes_noticed(tmp_path):
    path = tmp_path / "f.pdf"
    path.write_bytes(b"%PDF-1.4 hello")
    with local_file(str(path), max_bytes=100) as src:
        assert src.path == str(path) and src.kind == "pdf" and not src.changed()
        assert src.sha256 == hashlib.sha256(b"%PDF-1.4 hello").hexdigest()
        path.write_bytes(b"%PDF-1.4 changed!")
        assert src.changed()
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"), local_file(str(tmp_path / "empty"), max_bytes=100):
        pass
