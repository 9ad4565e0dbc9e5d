"""A persistent SQLite cache of judge answers, so reruns make zero calls and killed runs resume.

Each answer is committed in its own transaction the moment it arrives (WAL journal), so a process killed with
``kill -9`` at any moment loses at most the requests in flight, which the next run simply asks again; a request is
never stored twice (its key is the primary key). The key hashes everything that determines the answer: the judge
model, the prompt template, the exact messages and the request parameters. Never the API key or the endpoint's
credentials: only the answer text and token counts are stored.

Example:
    >>> import tempfile, os
    >>> from dmoerm_trl.labeling.cache import LabelCache, request_key
    >>> cache = LabelCache(os.path.join(tempfile.mkdtemp(), "cache.sqlite"))
    >>> key = request_key("judge", "tmpl-sha", [{"role": "user", "content": "1 or 2?"}], {"temperature": 0})
    >>> cache.get(key) is None
    True
    >>> cache.put(key, "1", prompt_tokens=12, completion_tokens=1)
    >>> cache.get(key).content, len(cache)
    ('1', 1)
    >>> cache.close()
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = "1"


def request_key(model: str, template_sha256: str, messages: Sequence[Mapping], params: Mapping) -> str:
    """SHA-256 of (model, template, messages, parameters): what determines a judge's answer."""
    payload = json.dumps(
        {"model": model, "template": template_sha256, "messages": list(messages), "params": dict(params)},
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    prompt_tokens: int
    completion_tokens: int


class LabelCache:
    """``key -> answer`` in SQLite, plus a small ``meta`` table (e.g. whether a server accepts JSON mode)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; every put is its own durable transaction.
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives a process kill, commits stay fast
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, content TEXT NOT NULL, "
            "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: cache schema {version}, this version reads {SCHEMA_VERSION}. Use a new --cache file."
            )

    def get(self, key: str) -> CachedAnswer | None:
        row = self._db.execute(
            "SELECT content, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else CachedAnswer(row[0], int(row[1]), int(row[2]))

    def put(
        self, key: str, content: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, model: str = ""
    ) -> None:
        # INSERT OR IGNORE: a second answer for the same request (a duplicate in flight) never replaces the first.
        self._db.execute(
            "INSERT OR IGNORE INTO answers (key, model, content, prompt_tokens, completion_tokens, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key, model, content, int(prompt_tokens), int(completion_tokens), time.time()),
        )

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
