"""Pinned npm packages read straight from their tarballs (no node_modules, no node at run time).

``npm pack NAME@VERSION`` downloads ``name-version.tgz`` into a cache directory
(default ``~/.cache/unclip/npm``); files are then read with ``tarfile``. For
offline use (and the tests) a ``packages`` directory may hold the ``.tgz`` files
or already-extracted packages (``<stem>/package/...`` or ``<stem>/...``, where the
stem is the tarball name without ``.tgz``, e.g. ``iconify-json-noto-1.2.9``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from unclip.errors import DataError

__all__ = ["DEFAULT_CACHE", "PINNED", "Package", "open_package", "tarball_stem"]

DEFAULT_CACHE = Path.home() / ".cache" / "unclip" / "npm"

# name → (version, SPDX licence); versions are pinned so builds are reproducible
PINNED: dict[str, tuple[str, str]] = {
    "@iconify-json/noto": ("1.2.9", "Apache-2.0"),
    "@iconify-json/twemoji": ("1.2.5", "CC-BY-4.0"),
    "@iconify-json/openmoji": ("1.2.29", "CC-BY-SA-4.0"),
    "@iconify-json/fluent-emoji-flat": ("1.2.6", "MIT"),
    "emojibase-data": ("17.0.0", "MIT"),
    "@tabler/icons": ("3.51.0", "MIT"),
}


def tarball_stem(name: str, version: str) -> str:
    """``@iconify-json/noto``, ``1.2.9`` → ``iconify-json-noto-1.2.9`` (npm pack's file name)."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}"


class Package:
    """Read-only access to the files of one npm package (tarball or directory)."""

    def __init__(self, name: str, version: str, location: Path):
        self.name, self.version, self.location = name, version, location
        self._tar: tarfile.TarFile | None = None

    @property
    def licence(self) -> str:
        return PINNED.get(self.name, ("", "unknown"))[1]

    def read_bytes(self, relative: str) -> bytes:
        if self.location.is_dir():
            for base in (self.location / "package", self.location):
                if (base / relative).is_file():
                    return (base / relative).read_bytes()
            raise DataError(f"{self.name}: {relative} not found in {self.location}; is this the right package?")
        if self._tar is None:
            try:
                self._tar = tarfile.open(self.location, "r:gz")
            except (tarfile.TarError, OSError) as exc:
                raise DataError(f"cannot read {self.location} ({exc}); delete it and build again") from None
        try:
            handle = self._tar.extractfile(f"package/{relative}")
        except KeyError:
            handle = None
        if handle is None:
            raise DataError(f"{self.name}: package/{relative} not found in {self.location}")
        return handle.read()

    def read_json(self, relative: str) -> Any:
        try:
            return json.loads(self.read_bytes(relative).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.name}: {relative} is not valid JSON ({exc}); delete the cached tarball") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def open_package(name: str, cache: Path | None = None, packages: Path | None = None) -> Package:
    """The pinned version of ``name`` from ``packages`` (offline) or the cache, running ``npm pack`` if needed."""
    if name not in PINNED:
        raise DataError(f"unknown npm package {name!r}; pinned ones: {', '.join(PINNED)}")
    version = PINNED[name][0]
    stem = tarball_stem(name, version)
    if packages is not None:
        for candidate in (packages / f"{stem}.tgz", packages / stem):
            if candidate.exists():
                return Package(name, version, candidate)
        raise DataError(f"{packages} has neither {stem}.tgz nor {stem}/; add it (npm pack {name}@{version})")
    cache = Path(cache or DEFAULT_CACHE)
    tarball = cache / f"{stem}.tgz"
    if not tarball.is_file():
        _npm_pack(f"{name}@{version}", cache)
        if not tarball.is_file():
            raise DataError(f"npm pack {name}@{version} did not produce {tarball}")
    return Package(name, version, tarball)


def _npm_pack(spec: str, cache: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"'npm' is not installed, so {spec} cannot be fetched; install Node.js (npm) or pass "
                        "--packages DIR holding the .tgz files from 'npm pack' on another machine")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([npm, "pack", spec, "--silent"], cwd=cache, capture_output=True, text=True,
                                timeout=600)
    except subprocess.TimeoutExpired:
        raise DataError(f"npm pack {spec} took over 10 minutes; check the network or use --packages") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"npm pack {spec} failed: {last} (offline? pass --packages DIR with the .tgz files)")
