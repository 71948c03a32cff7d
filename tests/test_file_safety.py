"""Nothing lost: every byte of a file that a completion did not touch stays as it was.

Property tests run the whole `infill` path (targets, cursor, edits, rendering, the two-phase
write) with a fixed completion in place of the model: they check file handling, not decoding
(test_infill.py decodes for real).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cg import infill as infill_mod
from cg.cli import main
from cg.complete import Completion, Request
from cg.engine import Timings
from cg.errors import InputError, ReadOnlyFileError, StaleFileError, WriteError
from cg.files import textfile

ENDINGS = ["\n", "\r\n", "\r"]
# (codec given to --encoding, BOM written, codec of the body)
ENCODINGS = [("utf-8", b"", "utf-8"), ("utf-8", b"\xef\xbb\xbf", "utf-8"), ("latin-1", b"", "latin-1"),
             ("utf-16", b"\xff\xfe", "utf-16-le"), ("utf-16", b"\xfe\xff", "utf-16-be"), ("utf-16", b"", "utf-16-le")]


def fixed(text: str):
    """A complete() stand-in that answers `text` (file handling under test, not decoding)."""

    def complete_fn(prefix, suffix, _request):
        return Completion(text, "stop_token", 0, 0, Timings(), "fixed")

    return complete_fn


def line_text(latin1: bool):
    # No line breaks, NUL (binary) or U+FEFF (a BOM at the start of a UTF-8 file); everything
    # else goes, including characters str.splitlines() would split at (\x0b, \x0c, \x85, U+2028).
    alphabet = st.characters(min_codepoint=1, max_codepoint=255 if latin1 else 0x10FFFF,
                             exclude_characters="\r\n\ufeff", exclude_categories=("Cs",))
    return st.text(alphabet, max_size=12)


@st.composite
def source_files(draw):
    given_encoding, bom, codec = draw(st.sampled_from(ENCODINGS))
    latin1 = codec == "latin-1"
    n = draw(st.integers(1, 6))
    lines = [[draw(line_text(latin1)), draw(st.sampled_from(ENDINGS))] for _ in range(n)]
    lines[-1][1] = draw(st.sampled_from(["", *ENDINGS]))  # with or without a final line break
    for a, b in itertools.pairwise(lines):
        if a[1] == "\r" and not b[0] and b[1].startswith("\n"):
            b[0] = "x"  # "\r" + "\n" would be one CRLF break, not two lines
    k = draw(st.integers(1, n))
    col = draw(st.one_of(st.none(), st.integers(1, len(lines[k - 1][0]) + 1)))
    append = not lines[-1][1] and lines[-1][0] and draw(st.booleans())  # FILE:N+1 after a last line without a break
    completion = draw(st.text(st.characters(min_codepoint=1, max_codepoint=255 if latin1 else 0x10FFFF,
                                            exclude_characters="\r\ufeff", exclude_categories=("Cs",)), max_size=20))
    return given_encoding, bom, codec, lines, k, col, bool(append), completion


def expected_bytes(bom, codec, lines, k, col, append, completion) -> bytes:
    """The oracle: the original bytes with the completion inserted, its line breaks taking the
    ending of the line it goes into (or the nearest one above when that line has none). A file
    that ended with a line break still does (the completion went at its very end)."""
    lines = [list(x) for x in lines]
    target = len(lines) if append else k
    ending = next((e for _, e in reversed(lines[:target]) if e), "\n")
    inserted = completion.replace("\n", ending)
    at_the_end = not append and k == len(lines) > 1 and lines[-1] == ["", ""]
    if at_the_end and completion and not completion.endswith("\n"):
        inserted += ending
    if append:
        lines[-1][1] = ending
        lines.append([inserted, ""])
    else:
        text = lines[k - 1][0]
        at = len(text) if col is None else col - 1
        lines[k - 1][0] = text[:at] + inserted + text[at:]
    return bom + "".join(c + e for c, e in lines).encode(codec)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source_files())
def test_only_the_completion_changes_a_file(case):
    given_encoding, bom, codec, lines, k, col, append, completion = case
    original = bom + "".join(c + e for c, e in lines).encode(codec)
    with tempfile.TemporaryDirectory() as folder:
        f = Path(folder) / "f.txt"
        f.write_bytes(original)
        spec = f"{f}:{len(lines) + 1}" if append else f"{f}:{k}" + (f":{col}" if col else "")
        infill_mod.infill([spec], request=Request(), write=True, encoding=given_encoding, complete_fn=fixed(completion))
        assert f.read_bytes() == expected_bytes(bom, codec, lines, k, col, append, completion)
        assert os.listdir(folder) == ["f.txt"]


def test_mixed_line_endings_stay_mixed(tmp_path):
    f = tmp_path / "a.py"
    f.write_bytes(b"x = 1\r\ny = 2\nz = 3\rdef f():\r\n    \n    return 1\n")
    infill_mod.infill([f"{f}:5"], request=Request(), write=True, complete_fn=fixed("a = 1\n    b = 2"))
    # The insertion takes line 5's ending ("\n"); every other line keeps its own.
    assert f.read_bytes() == b"x = 1\r\ny = 2\nz = 3\rdef f():\r\n    a = 1\n    b = 2\n    return 1\n"
    f.write_bytes(b"a\nb\r\n\r\nc\n")
    infill_mod.infill([f"{f}:3"], request=Request(), write=True, complete_fn=fixed("x\ny"))
    assert f.read_bytes() == b"a\nb\r\nx\r\ny\r\nc\n"


def test_symlink_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real" / "code.py"
    real.parent.mkdir()
    real.write_bytes(b"x = \n")
    link = tmp_path / "link.py"
    link.symlink_to(real)
    infill_mod.infill([f"{link}:1"], request=Request(), write=True, complete_fn=fixed("1"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"x = 1\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["code.py"]


@pytest.mark.parametrize("bom, codec", [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")])
def test_utf16_files(tmp_path, bom, codec):
    f = tmp_path / "a.py"
    f.write_bytes(bom + "é = \r\nz = 2\r\n".encode(codec))
    infill_mod.infill([f"{f}:1"], request=Request(), write=True, encoding="utf-16", complete_fn=fixed("'ü'"))
    assert f.read_bytes() == bom + "é = 'ü'\r\nz = 2\r\n".encode(codec)
    # Without --encoding, a UTF-16 file is refused with a hint, not taken for binary.
    with pytest.raises(InputError, match="not valid utf-8"):
        infill_mod.infill([f"{f}:1"], request=Request(), complete_fn=fixed("x"))


def test_read_only_file_is_refused_unless_forced(tmp_path, capsys, tiny_gguf):
    f = tmp_path / "a.py"
    f.write_bytes(b"x = \n")
    f.chmod(0o444)
    with pytest.raises(ReadOnlyFileError):
        infill_mod.infill([f"{f}:1"], request=Request(), write=True, complete_fn=fixed("1"))
    assert f.read_bytes() == b"x = \n"
    code = main(["infill", "-m", str(tiny_gguf), "--ctx", "256", "-n", "2", f"{f}:1", "--write"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"Error: {f} is read-only; nothing was written\nHint: ")
    infill_mod.infill([f"{f}:1"], request=Request(), write=True, force=True, complete_fn=fixed("1"))
    assert f.read_bytes() == b"x = 1\n" and f.stat().st_mode & 0o777 == 0o444


def _three_files(tmp_path):
    files = [tmp_path / f"f{i}.py" for i in range(3)]
    for f in files:
        f.write_bytes(b"x = \n")
    return files


def test_a_failure_before_any_rename_leaves_every_file(tmp_path, monkeypatch):
    files = _three_files(tmp_path)
    real_stage, calls = textfile.stage, []

    def stage_then_disk_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(files[1]))
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(textfile, "stage", stage_then_disk_full)
    with pytest.raises(WriteError, match="No space left on device; no file was changed"):
        infill_mod.infill([f"{f}:1" for f in files], request=Request(), write=True, complete_fn=fixed("1"))
    assert [f.read_bytes() for f in files] == [b"x = \n"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.py", "f1.py", "f2.py"]


def test_a_failure_during_the_renames_names_what_was_written(tmp_path, monkeypatch):
    files = _three_files(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("f1.py"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError) as info:
        infill_mod.infill([f"{f}:1" for f in files], request=Request(), write=True, complete_fn=fixed("1"))
    assert f"already written: {files[0]}" in info.value.message
    assert f"left as they were: {files[1]}, {files[2]}" in info.value.message
    assert [f.read_bytes() for f in files] == [b"x = 1\n", b"x = \n", b"x = \n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.py", "f1.py", "f2.py"]


def test_a_file_changed_meanwhile_stops_every_write(tmp_path):
    files = _three_files(tmp_path)

    def complete_and_edit(prefix, suffix, request):
        files[2].write_bytes(b"x = 'edited'\n")  # the user saves f2 while cg works
        return fixed("1")(prefix, suffix, request)

    with pytest.raises(StaleFileError, match=r"f2\.py changed on disk"):
        infill_mod.infill([f"{f}:1" for f in files], request=Request(), write=True, complete_fn=complete_and_edit)
    assert [f.read_bytes() for f in files] == [b"x = \n", b"x = \n", b"x = 'edited'\n"]


def test_temp_files_of_a_killed_run_are_removed_by_the_next(tmp_path):
    f = tmp_path / "a.py"
    f.write_bytes(b"x = \n")
    dead = _dead_pid()
    stale = tmp_path / f".a.py.{dead}.0123abcd.cg-tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".a.py.{os.getpid()}.0123abcd.cg-tmp"  # a running writer's: kept
    live.write_bytes(b"busy")
    infill_mod.infill([f"{f}:1"], request=Request(), write=True, complete_fn=fixed("1"))
    assert not stale.exists() and live.exists() and f.read_bytes() == b"x = 1\n"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_check_reads_any_encoding_and_skips_binary(tmp_path, capsys):
    latin = tmp_path / "latin.py"
    latin.write_bytes("# caf\xe9\n# cg: fill\n".encode("latin-1"))
    utf16 = tmp_path / "wide.py"
    utf16.write_bytes("x = 1\n# cg: fill\n".encode("utf-16"))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01# cg: fill\n")
    assert main(["check", str(latin), str(utf16), str(binary)]) == 1
    assert capsys.readouterr().out == f"{latin}:2\n{utf16}:2\n"


def test_marker_mode_passes_files_without_markers_unread(tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02")
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"caf\xe9 = 1\n")
    assert infill_mod.infill([str(binary), str(latin)], request=Request(), write=True, complete_fn=fixed("1")) == []
    assert binary.read_bytes() == b"\x00\x01\x02" and latin.read_bytes() == b"caf\xe9 = 1\n"


DIFF_FILES = {
    "src/app.py": b"def f():\n    y = \n    return y\n",
    "src/crlf.py": b"a = 1\r\nb = \r\nc = 3\r\n",
    "src/no newline.py": b"x = 1\ny = ",
    "bom.py": b"\xef\xbb\xbfz = \n",
    "latin.py": "caf\xe9 = \n".encode("latin-1"),
}


def _diff_repo(tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    for rel, data in DIFF_FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def _diff_of(repo, rel, text, encoding="utf-8"):
    line = 1 if rel in {"bom.py", "latin.py"} else 2
    [result] = infill_mod.infill([f"{repo / rel}:{line}"], request=Request(), encoding=encoding,
                                 complete_fn=fixed(text))
    return result.diff(), result.source.render(result.edits)


@pytest.mark.parametrize("tool", [["git", "apply"], ["patch", "-p1", "--quiet"]])
def test_diffs_apply_with_git_and_patch(tmp_path, tool):
    import shutil
    import subprocess

    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed")
    repo = _diff_repo(tmp_path)
    expected = {}
    diffs = b""
    for rel in DIFF_FILES:
        diff, after = _diff_of(repo, rel, "2", encoding="latin-1" if rel == "latin.py" else "utf-8")
        end = "\t" if " " in rel else ""
        assert diff.startswith(f"--- a/{rel}{end}\n+++ b/{rel}{end}\n".encode())
        diffs += diff
        expected[rel] = after
    proc = subprocess.run(tool, cwd=repo, input=diffs, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert {rel: (repo / rel).read_bytes() for rel in DIFF_FILES} == expected
    assert expected["src/crlf.py"] == b"a = 1\r\nb = 2\r\nc = 3\r\n"
    assert expected["src/no newline.py"] == b"x = 1\ny = 2"


def test_diff_paths_outside_a_repository(tmp_path, monkeypatch):
    f = tmp_path / "sub" / "a.py"
    f.parent.mkdir()
    f.write_bytes(b"x = \n")
    monkeypatch.chdir(tmp_path)
    [result] = infill_mod.infill(["sub/a.py:1"], request=Request(), complete_fn=fixed("1"))
    assert result.diff().startswith(b"--- a/sub/a.py\n+++ b/sub/a.py\n")
    [result] = infill_mod.infill([f"{f}:1"], request=Request(), complete_fn=fixed("1"))
    assert result.diff().startswith(b"--- a/sub/a.py\n")  # absolute, below the current folder
