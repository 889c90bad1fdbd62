"""``enspp train --resume``: the checkpoint is read once with ``weights_only=True`` and those
bytes are what training resumes from; a file swapped after the check cannot execute code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import SMALL, fit  # noqa: E402

from enspp.models.checkpoint import CorruptCheckpointError  # noqa: E402


class _Payload:
    """Unpickling this runs ``exec``: what a malicious checkpoint does to a full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "epoch": 0, "payload": _Payload(marker)}, path)
    return path


def test_the_payload_runs_under_a_full_unpickler(tmp_path):
    """The attack file is real: loading it without ``weights_only`` executes the payload."""
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_a_checkpoint_swapped_after_the_check_is_never_loaded(tmp_path, monkeypatch):
    """Swap the file for a malicious one right after the first ``torch.load`` (the check):
    the payload does not run and the run resumes from the checked bytes, exactly as an
    uninterrupted run (before the fix Lightning re-read the path with weights_only=False)."""
    kw = dict(name="mixed", options=SMALL["mixed"], early_stopping_patience=None)
    full = fit(tmp_path / "a", epochs=4, run_id="full", **kw)
    half = fit(tmp_path / "b", epochs=2, run_id="half", **kw)
    marker = tmp_path / "pwned"
    evil_bytes = malicious_checkpoint(tmp_path / "evil.ckpt", marker).read_bytes()
    real_load = torch.load
    calls: list[object] = []

    def load_then_swap(*args, **kwargs):
        out = real_load(*args, **kwargs)
        if not calls:
            half.last_checkpoint.write_bytes(evil_bytes)  # the attacker wins the race
        calls.append(args[0])
        return out

    monkeypatch.setattr(torch, "load", load_then_swap)
    try:
        resumed = fit(tmp_path / "b", epochs=4, run_id="ignored", resume=half.last_checkpoint,
                      **kw)
    finally:
        monkeypatch.undo()
        assert not marker.exists(), "the swapped checkpoint executed code"
    assert len(calls) == 1, f"the checkpoint was loaded {len(calls)} times: {calls}"
    assert resumed.run_dir == half.run_dir
    a = torch.load(full.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_a_malicious_resume_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint {evil} is corrupt or not a checkpoint") as e:
        fit(tmp_path, name="emos_global", epochs=1, resume=evil)
    assert not marker.exists()
    # torch's advice to load with weights_only=False is not passed on
    assert "objects other than tensors" in str(e.value) and "weights_only" not in str(e.value)
