"""bench/tapt.py refuses, before its quarter of an hour of pretraining, an --out whose encoder/ or model/ folder
holds something it did not write, and leaves that folder as it was."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("tapt", ROOT / "bench" / "tapt.py")
tapt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tapt)


@pytest.mark.parametrize("folder, message", [("encoder", "was not written by bench/tapt.py"),
                                             ("model", "is not a model folder written by signals.finetune")])
def test_a_folder_it_did_not_write_is_refused_before_any_training(folder, message, tmp_path, monkeypatch, capsys,
                                                                   shared_data):
    def must_not_train(*args, **kwargs):
        raise AssertionError("trained before refusing the folder")

    monkeypatch.setattr(tapt, "pretrain", must_not_train)
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "mine.txt").write_text("the user's own file\n")
    assert tapt.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("newsbt: error: ") and message in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [folder, f"{folder}/mine.txt"]
