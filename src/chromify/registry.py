"""Local model registry: immutable numbered versions and aliases that move atomically.

    models/registry/<name>/v0001/{model.safetensors, config.json, record.json}   read-only once written
    models/registry/<name>/aliases.json          {"champion": 3, "staging": 2}   replaced atomically
    models/registry/<name>/alias_history.jsonl   one line per alias move: who pointed where, from where, why

A lock file serialises writers, so concurrent registrations get distinct version numbers and never corrupt a
version or the alias table. A version is copied into a hidden staging folder and renamed into place, so a reader
sees it whole or not at all.

Rollback walks back along an alias's history like a stack: `promote`/`register` push, `rollback` pops. After
champion went v1 → v2 → v3, a rollback gives v2 and a second one v1 (never back to v3: that would be a toggle);
a version whose folder was deleted by hand is passed over, so rollback never points an alias at a missing version.

A model (weights and decode: its model id) already held by a version is never registered again (AlreadyRegistered),
so re-running registration (`dvc repro` after a rollback) cannot undo a promotion or rollback. Damaged metadata
(aliases.json, alias_history.jsonl, record.json, including a record value of another type than registration writes)
and aliases naming no version are RegistryErrors that name the file.
Two crash leftovers are not damage: a history line cut short before its newline (its move never reached the alias
table) is skipped and trimmed by the next move (rollback still passes through a version whose line was lost: each
line records the version its alias moved from), and a `v<digits>` folder without record.json is not a version, but
new versions are numbered past it. Numbers are never given twice: `last_version` keeps the highest one given, so a
version folder deleted by hand does not hand its number to the next model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chromify.errors import RegistryError
from chromify.io import atomic_write_json, atomic_write_text, file_sha256, fsync_path

CHAMPION = "champion"
MODEL_FILES = ("model.safetensors", "config.json")
RECORD = "record.json"
# Valid as a Vertex AI version alias too ([a-z][a-zA-Z0-9-]{0,126}[a-z0-9], lower case here), so one alias
# name works on both backends; `v3` and `3` would shadow version references, so they are refused.
_ALIAS = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
# ASCII digits only: str.isdigit and \d also take '²' (which int() refuses) and '٣' (which it reads as 3).
_VERSION_REF = re.compile(r"v?[0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


class AlreadyRegistered(RegistryError):
    """The model being registered is already `version` (the same model id): nothing was written."""

    def __init__(self, name: str, version: int, model_id: str):
        super().__init__(f"{name}: model {model_id} is already registered as v{version}")
        self.version = version
        self.model_id = model_id


def already_registered_note(version: object, model_id: str, champion: object | None) -> str:
    """What a registration of a model a version already holds says, in the local registry and on Vertex AI."""
    return f"already registered as v{version} (model {model_id}); no alias moved, champion is " + \
        ("none" if champion is None else f"v{champion}")


def check_gate_is_current(name: str, gate: dict[str, Any], champion: object | None, champion_id: str | None) -> None:
    """A gate decided against a champion that no longer is (moved since by promote or rollback) decides nothing."""
    if "champion_id" in gate and gate["champion_id"] != champion_id:
        raise RegistryError(f"{name}: the gate compared the candidate with {gate['champion_id'] or 'no champion'}, "
                            f"the champion is now {'none' if champion is None else f'v{champion} ({champion_id})'}; "
                            # DVC sees no change in evaluate's inputs (who is champion is none), so `dvc repro`
                            # alone would skip evaluate and stop here again
                            "re-run evaluate (`chromify evaluate`, or `dvc repro -f -s evaluate` then `dvc repro`; "
                            "in a cloud run, submit the pipeline again)")


def check_alias(alias: str) -> str:
    """Return `alias` if it is a usable alias name, else raise RegistryError saying why."""
    if _VERSION_REF.fullmatch(alias):
        raise RegistryError(f"alias {alias!r} looks like a version number; choose a name such as 'staging'")
    if not _ALIAS.fullmatch(alias):
        raise RegistryError(f"alias {alias!r}: use 1-63 lower-case letters, digits and '-', starting with a "
                            "letter and not ending with '-'")
    return alias


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def model_id_from_hashes(weights_sha256: str, config_sha256: str) -> str:
    """The model id from its files' sha256: weights and config (the decode) together decide what a model does."""
    return hashlib.sha256(f"{weights_sha256}:{config_sha256}".encode()).hexdigest()[:16]


def model_id_of(model_dir: str | Path) -> str:
    """A model's identity is the hash of its weights and its config, which holds the decode: two names for one
    model compare equal, and the same weights re-decoded (a new decode floor) are another model."""
    from chromify.errors import ModelLoadError

    files = [Path(model_dir) / name for name in MODEL_FILES]
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{model_dir}: no trained model here ({f.name} missing); train one first")
    return model_id_from_hashes(*(file_sha256(f) for f in files))


_TYPE_NAME = {dict: "an object", float: "a number", str: "a string"}


def _shape_problem(record: Any) -> str | None:
    """What in a version record is not of the type registration writes and `models list`/`show` read, or None.
    A null is no value, as a missing key is: a record passed to `register` may hold `"gate": null`."""
    if not isinstance(record, dict):
        return "not a JSON object"

    def obj(value: Any) -> dict:
        return value if isinstance(value, dict) else {}

    metrics, gate, files = record.get("metrics"), record.get("gate"), record.get("files")
    candidate = obj(metrics).get("candidate")
    checks = [("metrics", metrics, dict), ("metrics.candidate", candidate, dict),
              ("metrics.candidate.psnr", obj(candidate).get("psnr"), float),
              ("metrics.candidate.delta_cf", obj(candidate).get("delta_cf"), float),
              ("metrics.psnr_gain_db", obj(metrics).get("psnr_gain_db"), float),
              ("gate", gate, dict), ("gate.champion_id", obj(gate).get("champion_id"), str),
              ("files", files, dict), *((f"files.{name}", sha, str) for name, sha in obj(files).items()),
              *((key, record.get(key), str) for key in ("model_id", "registered_at", "git_commit"))]
    for where, value, kind in checks:
        fits = (isinstance(value, int | float) and not isinstance(value, bool) if kind is float
                else isinstance(value, kind))
        if value is not None and not fits:
            return f"{where} is {json.dumps(value)[:40]}, not {_TYPE_NAME[kind]}"
    return None


def _settle(stack: list[int], held: int) -> None:
    """Make `held`, a version the alias table is known to have held, the top of a rollback stack: logged moves that
    never reached the table (what follows it) are dropped, and a move whose line was lost is put back."""
    if stack and stack[-1] == held:
        return
    if held in stack:
        del stack[len(stack) - stack[::-1].index(held):]
    else:
        stack.append(held)


class LocalRegistry:
    """Versions and aliases of one model name under `root/name`."""

    def __init__(self, root: str | Path, name: str):
        self.dir = Path(root) / name
        self.name = name

    @property
    def pending_path(self) -> Path:
        return self.dir / "pending.json"

    @property
    def history_path(self) -> Path:
        return self.dir / "alias_history.jsonl"

    @contextmanager
    def _locked(self, create: bool = True) -> Iterator[None]:
        """The registry's lock; with create False, a registry that does not exist is not made for it (an alias
        move there fails anyway, and left a folder with a lock file behind)."""
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        elif not self.dir.is_dir():
            yield
            return
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reading (no lock needed: every file is replaced or renamed into place whole) --

    def versions(self) -> list[int]:
        if not self.dir.exists():
            return []
        return sorted(int(p.name[1:]) for p in self.dir.glob("v[0-9]*")
                      if _DIGITS.fullmatch(p.name[1:]) and (p / RECORD).exists())

    @property
    def aliases_path(self) -> Path:
        return self.dir / "aliases.json"

    def _read_json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise RegistryError(f"{path}: damaged {what} ({exc})") from None

    def aliases(self) -> dict[str, int]:
        """The alias table as stored; a damaged file is a RegistryError (see `target` for aliases naming no version)."""
        path = self.aliases_path
        if not path.exists():
            return {}
        table = self._read_json(path, "alias table")
        if not isinstance(table, dict) or not all(type(v) is int and v > 0 for v in table.values()):
            raise RegistryError(f"{path}: damaged alias table (expected {{\"alias\": version number, ...}}, got "
                                f"{json.dumps(table)[:80]})")
        return table

    def target(self, alias: str) -> int | None:
        """The version `alias` names (None: no such alias); an alias naming no version is a RegistryError."""
        version = self.aliases().get(alias)
        if version is not None and version not in self.versions():
            raise RegistryError(f"{self.aliases_path}: dangling alias {alias!r}: it names v{version}, which is not a "
                                f"registered version; point it at one with `chromify models promote VERSION "
                                f"--alias {alias}`")
        return version

    def aliases_of(self, version: int) -> list[str]:
        return sorted(alias for alias, v in self.aliases().items() if v == version)

    def record(self, version: int) -> dict[str, Any]:
        path = self.version_dir(version) / RECORD
        if not path.exists():
            raise RegistryError(f"{self.name}: no version {version}")
        record = self._read_json(path, "version record")
        problem = _shape_problem(record)
        if problem:
            raise RegistryError(f"{path}: damaged version record ({problem})")
        return record

    def model_id(self, version: int) -> str:
        """A version's model id (as `model_id_of` gives it)."""
        record = self.record(version)
        files = record.get("files") or {}
        return record.get("model_id") or model_id_from_hashes(files.get("model.safetensors", ""),
                                                               files.get("config.json", ""))

    def version_dir(self, version: int) -> Path:
        return self.dir / f"v{version:04d}"

    def resolve(self, ref: str | int, or_folder: bool = False) -> int:
        """An alias ('champion'), a version number ('3', 'v3') → version number. `or_folder`: the caller also takes
        a model's folder, so an empty registry's error says that one can be named instead."""
        text = str(ref)
        aliases = self.aliases()
        if text in aliases:
            return self.target(text)
        versions = self.versions()  # a listing of the folder: once
        if _VERSION_REF.fullmatch(text):  # matched as text: int() refuses a number of over 4300 digits
            version = {str(v): v for v in versions}.get(text.removeprefix("v").lstrip("0"))
            if version is not None:
                return version
        if not versions:
            raise RegistryError(f"{self.name}: no version or alias {text!r}: nothing is registered in {self.dir} yet "
                                "(a model is registered when its evaluation gate passes" +
                                ("; a trained model's folder, such as models/candidate, can be named instead)"
                                 if or_folder else ")"))
        raise RegistryError(f"{self.name}: no version or alias {text!r} (have "
                            f"{', '.join(f'v{v}' for v in versions)}{''.join(f', {a}' for a in sorted(aliases))})")

    def champion(self) -> int | None:
        return self.target(CHAMPION)

    def model_dir(self, ref: str | int) -> Path:
        """The folder of the version `ref` names, for colorize and serve, which take a model's folder as well;
        refused when its files are not those registered: the weights vouch for themselves, but config.json (the
        decode) does not."""
        version = self.resolve(ref, or_folder=True)
        changed = self._changed(version)
        if changed:
            raise RegistryError(f"{self.version_dir(version)}: v{version} has {', '.join(changed)} missing or changed "
                                "since it was registered; restore them, or name another version "
                                "(`chromify models list`)")
        return self.version_dir(version)

    def verify(self, ref: str | int) -> list[str]:
        """Files of a version whose sha256 differs from the one recorded at registration (empty: intact); a model
        file with no sha256 recorded (record.json edited by hand) is listed too, as nothing vouches for it."""
        return self._changed(self.resolve(ref))

    def _changed(self, version: int) -> list[str]:
        recorded = self.record(version).get("files") or {}
        folder = self.version_dir(version)
        return [name for name in sorted({*MODEL_FILES, *recorded})
                if name not in recorded or not (folder / name).exists() or file_sha256(folder / name) != recorded[name]]

    def alias_history(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Every alias move, oldest first: {alias, version, previous, action, at}; one alias's if given."""
        path = self.history_path
        data = path.read_bytes() if path.exists() else b""
        moves = []
        # Bytes after the last newline are an append a crash cut short: its move never reached the alias table (the
        # line is written first), and the next move trims it (`_trim_torn_append`).
        for n, raw in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                move = json.loads(raw.decode())
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise RegistryError(f"{path}: line {n} is damaged ({exc})") from None
            if not (isinstance(move, dict) and isinstance(move.get("alias"), str)
                    and type(move.get("version")) is int and isinstance(move.get("at"), str)):
                raise RegistryError(f"{path}: line {n} is not an alias move (needs alias, version and at)")
            moves.append(move)
        return [m for m in moves if alias is None or m["alias"] == alias]

    # -- writing (under the lock) --

    def register(self, model_dir: str | Path, record: dict[str, Any], aliases: tuple[str, ...] = ()) -> int:
        """Copy a model in as the next version and point `aliases` at it; returns the version.

        A record from `chromify.stages.registration_record` is checked under the lock: a model (`model_id`) that a
        version already holds raise AlreadyRegistered, and a gate decided against a champion other than the current
        one (`gate.champion_id`) is refused when the champion alias is to move.
        """
        model_dir = Path(model_dir)
        for alias in aliases:
            check_alias(alias)
        problem = _shape_problem(record)
        if problem:  # written, it would be a damaged record for good (a version is read-only)
            raise RegistryError(f"{self.name}: refusing to register a damaged version record ({problem})")
        missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
        if missing:
            raise RegistryError(f"{model_dir}: not a model directory (missing {', '.join(missing)})")
        with self._locked():
            # Staging folders are only made under this lock, so any found now belong to a killed writer.
            for stale in self.dir.glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            unfinished = self._unfinished_locked(record, aliases)
            if unfinished is not None:
                self._move_locked(dict.fromkeys(aliases, unfinished), "register")
                self.pending_path.unlink()
                return unfinished
            self._check_locked(record, aliases)
            version = self._next_version_locked()
            # mkdir (not mkdtemp, which makes it 0700) so the version folder gets the umask's mode: another uid,
            # such as a serving container, can read it. The name is unique: staging happens only under the lock.
            staging = self.dir / f".staging-{os.getpid()}"
            staging.mkdir()
            try:
                files = {}
                for f in MODEL_FILES:
                    shutil.copyfile(model_dir / f, staging / f)
                    fsync_path(staging / f)  # on disk before any alias, itself fsynced, can point at it
                    files[f] = file_sha256(staging / f)
                full = {**record, "name": self.name, "version": version, "registered_at": _now(), "files": files}
                atomic_write_json(staging / RECORD, full)
                for f in (*MODEL_FILES, RECORD):
                    os.chmod(staging / f, _READ_ONLY)
                if aliases:  # until the aliases have moved: a kill in between leaves this to finish by
                    atomic_write_json(self.pending_path, {"version": version, "aliases": list(aliases)})
                os.rename(staging, self.version_dir(version))
                fsync_path(self.dir)
                atomic_write_text(self.last_version_path, f"{version}\n")
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._move_locked(dict.fromkeys(aliases, version), "register")
            self.pending_path.unlink(missing_ok=True)
        return version

    def _unfinished_locked(self, record: dict[str, Any], aliases: tuple[str, ...]) -> int | None:
        """The version whose registration a kill stopped after it was published and before its aliases moved, when
        this is the same model registered again with the same aliases (`dvc repro` re-running register); None
        otherwise. Only `pending.json`, written before the version appears and removed once its aliases moved,
        says so: a version registered without aliases, or moved from since (rollback, promote), never is."""
        if not self.pending_path.exists():
            return None
        pending = self._read_json(self.pending_path, "pending registration")
        try:
            version, moved = int(pending["version"]), tuple(pending["aliases"])
        except (TypeError, KeyError, ValueError):
            raise RegistryError(f"{self.pending_path}: damaged pending registration (expected "
                                '{"version": N, "aliases": [...]})') from None
        table = self.aliases()
        if version not in self.versions() or all(table.get(a) == version for a in moved):
            self.pending_path.unlink()  # killed before the version appeared, or after its aliases moved
            return None
        if set(moved) != set(aliases) or self.model_id(version) != record.get("model_id"):
            return None  # another model's registration: the pending one waits for its own re-run
        if CHAMPION in moved:
            current = self.champion()
            check_gate_is_current(self.name, record.get("gate") or {}, current,
                                  None if current is None else self.model_id(current))
        return version

    @property
    def last_version_path(self) -> Path:
        return self.dir / "last_version"

    def _next_version_locked(self) -> int:
        """One past every `v<digits>` entry, complete or not (a folder left without its record.json by a hand edit or
        a partial delete is not a version, but its name is taken), and past every number ever given: a number names
        one model for good, in the alias history and in whatever outside wrote it down, even after its folder went."""
        taken = max((int(p.name[1:]) for p in self.dir.glob("v[0-9]*") if _DIGITS.fullmatch(p.name[1:])),
                    default=0)
        try:
            text = self.last_version_path.read_text()
        except FileNotFoundError:  # a registry from before this file: its folders are all there is to go by
            return taken + 1
        if not _DIGITS.fullmatch(text.strip()):
            raise RegistryError(f"{self.last_version_path}: damaged (expected the highest version number ever "
                                f"registered, got {text.strip()[:40]!r})")
        return max(taken, int(text)) + 1

    def _check_locked(self, record: dict[str, Any], aliases: tuple[str, ...]) -> None:
        self.aliases()  # a damaged alias table fails before a version is written, not after
        model_id = record.get("model_id")
        for v in self.versions() if model_id else ():
            if self.model_id(v) == model_id:
                raise AlreadyRegistered(self.name, v, model_id)
        gate = record.get("gate") or {}
        if CHAMPION in aliases and "champion_id" in gate:
            current = self.champion()
            check_gate_is_current(self.name, gate, current, None if current is None else self.model_id(current))

    def _move_locked(self, changes: dict[str, int], action: str) -> None:
        if not changes:
            return
        table = self.aliases()
        self._trim_torn_append()
        # The history line goes first: a crash between the two leaves a line for a move the table never made,
        # which `_stack` reconciles with the table, instead of a move with no record of it.
        with open(self.history_path, "a") as f:
            for alias, version in changes.items():
                f.write(json.dumps({"alias": alias, "version": version, "previous": table.get(alias),
                                    "action": action, "at": _now()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(self.dir / "aliases.json", {**table, **changes})

    def _trim_torn_append(self) -> None:
        """Cut the history back to its last newline: a torn append (disk full, power cut) would otherwise have the
        next move written onto its fragment, one damaged line from then on."""
        try:
            f = open(self.history_path, "rb+")
        except FileNotFoundError:
            return
        with f:
            f.seek(max(f.seek(0, os.SEEK_END) - 1, 0))
            if f.read(1) in (b"", b"\n"):
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())

    def _stack(self, alias: str) -> list[int]:
        """The versions `alias` can be rolled back through, current last."""
        stack: list[int] = []
        for move in self.alias_history(alias):
            if type(move.get("previous")) is int:  # what the table held when this move was made
                _settle(stack, move["previous"])
            if move.get("action") == "rollback":
                if stack:
                    stack.pop()
            elif not stack or stack[-1] != move["version"]:
                stack.append(move["version"])
        current = self.aliases().get(alias)
        if current is not None:
            _settle(stack, current)
        return stack

    def set_alias(self, alias: str, ref: str | int) -> int:
        """Point `alias` at a version (a promotion when alias is champion); returns the version."""
        check_alias(alias)
        with self._locked(create=False):
            version = self.resolve(ref)
            if self.aliases().get(alias) != version:
                self._move_locked({alias: version}, "promote")
        return version

    def rollback(self, alias: str = CHAMPION) -> int:
        """Point `alias` at the version it named before its last promotion; repeated, go further back. Versions
        deleted since are passed over: an alias naming no version breaks every command that reads it."""
        with self._locked(create=False):
            stack = self._stack(alias)
            if len(stack) < 2:
                where = f"v{stack[-1]}" if stack else "no version"
                raise RegistryError(f"{self.name}: alias {alias!r} has no earlier version to roll back to "
                                    f"(it names {where} and has not named another before)")
            registered = set(self.versions())
            earlier = [v for v in reversed(stack[:-1]) if v != stack[-1]]
            to = next((v for v in earlier if v in registered), None)
            if to is None:
                gone = list(dict.fromkeys(earlier))
                said = (f"v{gone[0]}, which it named before, is no longer registered (no "
                        f"{self.version_dir(gone[0]) / RECORD})" if len(gone) == 1 else
                        f"{', '.join(f'v{v}' for v in gone)}, which it named before, are no longer registered (no "
                        f"{RECORD} in {', '.join(str(self.version_dir(v)) for v in gone)})")
                raise RegistryError(f"{self.name}: alias {alias!r} has no earlier version to roll back to: {said}")
            self._move_locked({alias: to}, "rollback")
            return to
