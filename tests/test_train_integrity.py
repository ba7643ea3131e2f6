"""A checkpoint's recorded checksums, and the checks of one written before they were recorded."""
from __future__ import annotations

import torch

from kotomamba.train.checkpoint_files import save_local
from kotomamba.train.integrity import checkpoint_defect, integrity_digest, record_integrity


def checkpoint(path):
    save_local({"model": {"w": torch.arange(4096, dtype=torch.float32)}}, path)
    return sorted(path.glob("*.distcp"))[0]


def test_recorded_checksums_find_a_flipped_byte(tmp_path):
    shard = checkpoint(tmp_path / "ckpt")
    record_integrity(tmp_path / "ckpt")
    assert checkpoint_defect(tmp_path / "ckpt") is None and integrity_digest(tmp_path / "ckpt")
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1
    shard.write_bytes(bytes(data))
    assert checkpoint_defect(tmp_path / "ckpt") == \
        f"{shard}: SHA-256 differs from the one recorded when it was written (corrupted)"


def test_a_checkpoint_without_checksums_is_checked_against_dcps_metadata(tmp_path):
    shard = checkpoint(tmp_path / "ckpt")
    assert checkpoint_defect(tmp_path / "ckpt") is None and integrity_digest(tmp_path / "ckpt") is None
    shard.write_bytes(shard.read_bytes()[:1000])
    assert "(truncated)" in checkpoint_defect(tmp_path / "ckpt")
    shard.unlink()
    assert checkpoint_defect(tmp_path / "ckpt") == f"{shard}: missing (named by {tmp_path / 'ckpt' / '.metadata'})"
    (tmp_path / "ckpt" / ".metadata").write_bytes(b"\x80garbage")
    assert "unreadable" in checkpoint_defect(tmp_path / "ckpt")
