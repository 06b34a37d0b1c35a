"""Local model registry: immutable numbered versions and aliases that move atomically.

    models/registry/<name>/v0001/{model.safetensors, config.json, record.json}
    models/registry/<name>/aliases.json        {"champion": 3, ...}

A lock file serialises writers, so concurrent registrations get distinct version numbers and never
corrupt a version or the alias table.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chromify.errors import RegistryError
from chromify.io import atomic_write_json

CHAMPION = "champion"


class LocalRegistry:
    def __init__(self, root: str | Path, name: str):
        self.dir = Path(root) / name
        self.name = name

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def versions(self) -> list[int]:
        if not self.dir.exists():
            return []
        return sorted(int(p.name[1:]) for p in self.dir.glob("v[0-9]*") if (p / "record.json").exists())

    def aliases(self) -> dict[str, int]:
        path = self.dir / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def record(self, version: int) -> dict[str, Any]:
        path = self.version_dir(version) / "record.json"
        if not path.exists():
            raise RegistryError(f"{self.name}: no version {version}")
        return json.loads(path.read_text())

    def version_dir(self, version: int) -> Path:
        return self.dir / f"v{version:04d}"

    def resolve(self, ref: str | int) -> int:
        """An alias ('champion'), a version number ('3', 'v3') → version number."""
        text = str(ref)
        aliases = self.aliases()
        if text in aliases:
            return aliases[text]
        digits = text[1:] if text.startswith("v") else text
        if digits.isdigit() and int(digits) in self.versions():
            return int(digits)
        raise RegistryError(f"{self.name}: no version or alias {text!r} (have {self.versions() or 'none'})")

    def champion(self) -> int | None:
        return self.aliases().get(CHAMPION)

    def register(self, model_dir: str | Path, record: dict[str, Any], aliases: tuple[str, ...] = ()) -> int:
        """Copy a model in as the next version and point `aliases` at it; returns the version."""
        model_dir = Path(model_dir)
        with self._locked():
            version = (max(self.versions(), default=0)) + 1
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.dir))
            try:
                for f in ("model.safetensors", "config.json"):
                    shutil.copy2(model_dir / f, staging / f)
                full = {**record, "name": self.name, "version": version,
                        "registered_at": datetime.now(UTC).isoformat(timespec="seconds")}
                atomic_write_json(staging / "record.json", full)
                os.rename(staging, self.version_dir(version))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._set_aliases_locked(dict.fromkeys(aliases, version))
        return version

    def _set_aliases_locked(self, changes: dict[str, int]) -> None:
        if not changes:
            return
        table = self.aliases()
        table.update(changes)
        atomic_write_json(self.dir / "aliases.json", table)
        history = self.dir / "alias_history.jsonl"
        with open(history, "a") as f:
            for alias, version in changes.items():
                f.write(json.dumps({"alias": alias, "version": version,
                                    "at": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")

    def set_alias(self, alias: str, ref: str | int) -> int:
        with self._locked():
            version = self.resolve(ref)
            self._set_aliases_locked({alias: version})
        return version

    def rollback(self, alias: str = CHAMPION) -> int:
        """Point `alias` back at the version it named before its last move."""
        with self._locked():
            history = self.dir / "alias_history.jsonl"
            moves = [json.loads(line) for line in history.read_text().splitlines()] if history.exists() else []
            mine = [m["version"] for m in moves if m["alias"] == alias]
            if len(mine) < 2:
                raise RegistryError(f"{self.name}: alias {alias!r} has no earlier version to roll back to")
            self._set_aliases_locked({alias: mine[-2]})
            return mine[-2]

    def model_dir(self, ref: str | int) -> Path:
        return self.version_dir(self.resolve(ref))
