"""`cg infill` on real files with real decoding on the tiny CodeGemma-layout GGUF."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from cg import infill as infill_mod
from cg.cli import main
from cg.complete import Request
from cg.errors import InputError, StaleFileError, WriteError
from cg.files import textfile

from .helpers import ID, NO_STOPS, run_cg, scripted


@pytest.fixture()
def run(tiny_opts, tiny_engine):
    def fill(specs, text="X = 1", **kw):
        return infill_mod.infill(specs, replace(tiny_opts, logits_processor=scripted(tiny_engine, text)), **kw)

    return fill


def test_write_lf_at_end_of_line(tmp_path, run):
    f = tmp_path / "a.py"
    f.write_bytes(b"def f():\n    y = \n    return y\n")
    run([f"{f}:2"], text="2", write=True)
    assert f.read_bytes() == b"def f():\n    y = 2\n    return y\n"


def test_crlf_bom_and_mode_are_kept(tmp_path, run):
    f = tmp_path / "a.py"
    f.write_bytes(b"\xef\xbb\xbfdef f():\r\n    \r\n    return y\r\n")
    f.chmod(0o751)
    run([f"{f}:2"], text="y = 1\n    y += 1", write=True)
    assert f.read_bytes() == b"\xef\xbb\xbfdef f():\r\n    y = 1\r\n    y += 1\r\n    return y\r\n"
    assert f.stat().st_mode & 0o777 == 0o751


def test_append_to_file_without_trailing_newline(tmp_path, run):
    f = tmp_path / "a.py"
    f.write_bytes(b"x = 1\ny = 2")
    run([f"{f}:3"], text="z = 3", write=True)
    assert f.read_bytes() == b"x = 1\ny = 2\nz = 3"


def test_tabs_and_column(tmp_path, run):
    f = tmp_path / "a.go"
    f.write_bytes(b"func f() {\n\treturn ()\n}\n")
    run([f"{f}:2:10"], text="a + b", write=True)
    assert f.read_bytes() == b"func f() {\n\treturn (a + b)\n}\n"


def test_several_targets_in_one_file_fill_bottom_up(tmp_path, run):
    f = tmp_path / "a.py"
    f.write_bytes(b"a = \nb = \nc = \n")
    results = run([f"{f}:1", f"{f}:3"], text="7", write=True)
    assert f.read_bytes() == b"a = 7\nb = \nc = 7\n"
    assert [x.target.line for x in results[0].filled] == [1, 3]


def test_marker_mode_keeps_indentation(tmp_path, run):
    f = tmp_path / "notes.txt"  # a language cg does not know: any comment style holds a marker
    f.write_bytes(b"def f(a):\n    # cg: fill\n    return a\n\n// cg: fill something\n")
    run([str(f)], text="a += 1", write=True)
    assert f.read_bytes() == b"def f(a):\n    a += 1\n    return a\n\na += 1\n"


def test_check_exit_codes(tmp_path, capsys):
    clean, marked = tmp_path / "clean.py", tmp_path / "marked.py"
    clean.write_text("x = 1\n")
    marked.write_text("x = 1\n  # cg: fill\n")
    assert main(["check", str(clean)]) == 0
    assert main(["check", str(clean), str(marked)]) == 1
    assert capsys.readouterr() == (f"{marked}:2\n", "")


def test_cli_stdout_diff_and_json(tmp_path, tiny_gguf, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "a.py"
    f.write_text("def f():\n    return 1\n")
    base = ["infill", "-m", str(tiny_gguf), "--ctx", "512", "-n", "4", *NO_STOPS]
    assert main([*base, f"{f}:1"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out and f.read_text() == "def f():\n    return 1\n"
    assert main([*base, "--diff", f"{f}:1"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith("--- a/a.py\n+++ b/a.py\n") and "-def f():\n+def f():" + out in diff
    assert main([*base, "--json", f"{f}:1", f"{f}:2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and '"line": 1' in lines[0] and '"line": 2' in lines[1]


def test_failure_during_write_leaves_file_untouched(tmp_path, run, monkeypatch):
    f = tmp_path / "a.py"
    original = b"x = \r\ny = 2\r\n"
    f.write_bytes(original)

    def broken_replace(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(WriteError, match="could not replace"):
        run([f"{f}:1"], write=True)
    assert f.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py"]


def test_failure_during_generation_leaves_file_untouched(tmp_path, tiny_opts, tiny_engine):
    from cg.complete import complete

    f = tmp_path / "a.py"
    f.write_bytes(b"a = \nb = \n")
    calls = []

    def complete_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second target is generating
        return complete(*args)

    with pytest.raises(KeyboardInterrupt):
        infill_mod.infill([f"{f}:1", f"{f}:2"], request=replace(tiny_opts, logits_processor=scripted(tiny_engine, "1")),
                          write=True, complete_fn=complete_then_interrupt)
    assert len(calls) == 2
    assert f.read_bytes() == b"a = \nb = \n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py"]


def test_file_changed_on_disk_is_refused(tmp_path, run, tiny_engine, tiny_opts):
    f = tmp_path / "a.py"
    f.write_text("a = \n")
    src = textfile.read_source(f)
    result = infill_mod.fill_file(src, [infill_mod.Target(f, 1)],
                                  replace(tiny_opts, logits_processor=scripted(tiny_engine, "1")))
    f.write_text("a = 'edited meanwhile'\n")
    with pytest.raises(StaleFileError):
        textfile.write_sources([(result.source, result.edits)])
    assert f.read_text() == "a = 'edited meanwhile'\n"


@pytest.mark.parametrize("make,spec,match", [
    (None, "{d}/missing.py:1", "file not found"),
    (None, "{d}:1", "is a directory"),
    (b"x\n", "{f}:3", "line out of range"),
    (b"x\n", "{f}:1:3", "column out of range"),
    (b"x\n", "{f}:one", "LINE and COL must be numbers"),
    (b"x\n", "{f}:0", "start at 1"),
    (b"\x00\x01binary", "{f}:1", "binary"),
    (b"caf\xe9\n", "{f}:1", "not valid utf-8"),
])
def test_bad_input(tmp_path, tiny_opts, make, spec, match):
    f = tmp_path / "a.py"
    if make is not None:
        f.write_bytes(make)
    with pytest.raises(InputError, match=match):
        infill_mod.infill([spec.format(d=tmp_path, f=f)], request=tiny_opts, write=True)
    if make is not None:
        assert f.read_bytes() == make


def test_bad_input_through_cli_is_one_error_line(tmp_path, capsys):
    assert main(["infill", f"{tmp_path}/nope.py:1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"Error: file not found: {tmp_path}/nope.py" and err[1].startswith("Hint: ")


def test_context_auto_picks_local_imports_in_order(tmp_path, tiny_opts, tiny_engine):
    (tmp_path / ".git").mkdir()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "util.py").write_text("def helper():\n    return 1\n")
    (tmp_path / "models.py").write_text("class Model:\n    pass\n")
    main_py = tmp_path / "main.py"
    main_py.write_text("import os\nimport models\nfrom pkg import util\n\nx = \n")
    from cg.files.repo_context import local_imports

    found = [p.relative_to(tmp_path).as_posix() for p in local_imports(main_py)]
    assert found == ["models.py", "pkg/__init__.py", "pkg/util.py"]
    res = infill_mod.infill([f"{main_py}:5"], request=replace(tiny_opts, logits_processor=scripted(tiny_engine, "1")),
                            context="auto")
    prompt = res[0].filled[0].completion.prompt_ids
    t = tiny_engine.tokenize_text
    chunk = {rel: [*t(f"{rel}\n{(tmp_path / rel).read_text()}"), ID["fim_sep"]] for rel in found}
    # Nearest (first imported) file sits next to the current file, the farthest right after BOS.
    expected = [2, *chunk["pkg/util.py"], *chunk["pkg/__init__.py"], *chunk["models.py"], *t("main.py\n"), 67]
    assert prompt[:prompt.index(67) + 1] == expected
    # A small budget keeps only whole files that fit.
    small = Request(**{**tiny_opts.__dict__, "n_ctx": 256, "max_tokens": 200})
    res = infill_mod.infill([f"{main_py}:5"], request=replace(small, logits_processor=scripted(tiny_engine, "1")),
                            context="auto")
    assert len(res[0].filled[0].completion.prompt_ids) + 200 <= 256
    assert res[0].filled[0].completion.prompt_ids.count(ID["fim_sep"]) < 3


def test_context_auto_for_js_ts_c_and_rust(tmp_path):
    from cg.files.repo_context import local_imports

    (tmp_path / ".git").mkdir()
    files = {"web/api.ts": "", "web/util/index.js": "", "web/old.js": "", "web/style.css": "",
             "src/point.h": "", "include/shared.h": "", "crate/src/parser.rs": "", "crate/src/lexer/mod.rs": ""}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    app = tmp_path / "web" / "app.tsx"
    app.write_text("import React from 'react'\nimport { get } from './api.js'\nimport u from \"./util\"\n"
                   "const old = require('./old')\nimport './style.css'\nimport x from './missing'\n")
    rel = lambda paths: [p.relative_to(tmp_path).as_posix() for p in paths]  # noqa: E731
    assert rel(local_imports(app)) == ["web/api.ts", "web/util/index.js", "web/old.js", "web/style.css"]
    main_c = tmp_path / "src" / "main.c"
    main_c.write_text('#include <stdio.h>\n#include "point.h"\n# include "include/shared.h"\n')
    assert rel(local_imports(main_c)) == ["src/point.h", "include/shared.h"]
    lib = tmp_path / "crate" / "src" / "lib.rs"
    lib.write_text("pub mod parser;\nmod lexer;\nmod tests {\n}\n")
    assert rel(local_imports(lib)) == ["crate/src/parser.rs", "crate/src/lexer/mod.rs"]


def test_a_file_name_with_colons_is_a_target(tmp_path, run):
    """`a:b.py:2` is line 2 of the file `a:b.py` (it was `LINE and COL must be numbers`)."""
    f = tmp_path / "a:b.py"
    f.write_bytes(b"x = 1\ny = \n")
    run([f"{f}:2"], text="2", write=True)
    assert f.read_bytes() == b"x = 1\ny = 2\n"
    run([f"{f}:1:2"], text="z", write=True)
    assert f.read_bytes() == b"xz = 1\ny = 2\n"


def test_the_longest_existing_file_name_wins(tmp_path):
    (tmp_path / "a.py").write_text("x\n")
    (tmp_path / "a.py:2").write_text("y\n")
    assert infill_mod.parse_target(f"{tmp_path}/a.py:2") == (tmp_path / "a.py:2", None, None)
    assert infill_mod.parse_target(f"{tmp_path}/a.py:2:1") == (tmp_path / "a.py:2", 1, None)
    assert infill_mod.parse_target(f"{tmp_path}/a.py:3:1") == (tmp_path / "a.py", 3, 1)
    # No such file: the trailing numbers are LINE and COL, so the error names the missing file.
    assert infill_mod.parse_target(f"{tmp_path}/x:y.py:3:4") == (tmp_path / "x:y.py", 3, 4)
    with pytest.raises(InputError, match="LINE and COL must be numbers"):
        infill_mod.parse_target(f"{tmp_path}/a.py:x")


def test_a_bare_line_number_argument_hints_at_file_line(tmp_path, capsys):
    f = tmp_path / "app.py"
    f.write_text("x = 1\n")
    assert main(["infill", str(f), "42"]) == 2
    assert capsys.readouterr() == ("", f"Error: file not found: 42\nHint: To fill line 42 of {f}, write {f}:42 "
                                       "(FILE:LINE, no space).\n")


def test_a_cursor_at_the_end_of_a_def_line_fills_its_body_only(tmp_path, run):
    """The model's body, then `def remove...`: the block opened by the cursor's line ends where
    the indentation comes back to the `def` (it ran on to max_tokens)."""
    f = tmp_path / "app.py"
    f.write_text("def add(a, b):\n\nprint(add(1, 2))\n")
    results = run([f"{f}:1"], text="\n    return a + b\n\ndef remove(a, b):\n    return a - b\n", write=True)
    assert f.read_text() == "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    assert results[0].filled[0].completion.stop_reason == "end_of_block"


def test_a_cursor_in_a_very_long_line_is_not_quadratic(tmp_path, tiny_gguf):
    """The rest of the cursor's line was checked prefix by prefix for every token: a 1 MB rest
    took 35 s, 4 MB over 300 s. The timeout is only a hang guard."""
    line = "x = [" + ", ".join(["1"] * 700_000) + "]"  # 2 MiB
    f = tmp_path / "big.py"
    f.write_text(f"def f():\n{line}\ny = 2\n")
    proc = run_cg("infill", f"{f}:2:{len(line) // 2}", "-m", str(tiny_gguf), "--ctx", "512", "-n", "16", "-q",
                  *NO_STOPS, timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""
