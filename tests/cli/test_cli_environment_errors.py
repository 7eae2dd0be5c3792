"""Errors of the machine, not the code (a full disk, a read-only folder, a file for --out):
one line naming the file, exit 2; any other OSError keeps its traceback (a bug)."""

from __future__ import annotations

import errno
import os

import pytest

import medfoundry.cli as cli
from medfoundry.cli import main


def _raising(exc: BaseException):
    def handler(args) -> None:
        raise exc

    return handler


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOTDIR])
def test_an_environment_oserror_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, code):
    target = tmp_path / "run" / "last.ckpt"
    monkeypatch.setattr(
        cli, "cmd_pretrain", _raising(OSError(code, os.strerror(code), str(target)))
    )
    rc = main(["pretrain", "--method", "moco", "--data", str(tmp_path), "--out", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"medfoundry: error: {target}: {os.strerror(code)}"]


def test_another_oserror_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "cmd_pretrain", _raising(OSError(errno.EBADF, "Bad file descriptor")))
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["pretrain", "--method", "moco", "--data", str(tmp_path), "--out", str(tmp_path)])


def test_pretrain_out_that_is_a_file_is_one_line(xray_folder, tmp_path, capsys, tiny_pretrain_args):
    out = tmp_path / "a_file"
    out.write_text("not a folder\n")
    rc = main(tiny_pretrain_args("moco", xray_folder, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(out) in err[0] and "is a file" in err[0]
    assert out.read_text() == "not a folder\n"
