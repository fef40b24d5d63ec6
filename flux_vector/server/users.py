"""Who is calling: the API keys and the user each one belongs to.

``flux-vector serve --api-keys FILE``: one ``NAME KEY`` pair a line, whitespace between them; ``#`` starts a comment
(to the end of the line) and blank lines are skipped. The file is refused at start when anyone but its owner and group
may read it (world-readable) or when a line is malformed: a name is 1-64 of ``A-Z a-z 0-9 _ . -``, a key at least
``MIN_KEY_LENGTH`` printable ASCII characters without spaces, no name or key twice. Errors name the file and the line,
never the key. ``$FLUX_VECTOR_API_KEY`` is the one-key shortcut: the user ``default``.

A key is accepted in ``x-api-key`` (the segmind SDK's header) or ``Authorization: Bearer KEY`` (Prometheus). The
comparison is constant-time against every key. Logs and ``/metrics`` name the user, never the key.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_USER = "default"  # the user of $FLUX_VECTOR_API_KEY
ANONYMOUS = ""  # the owner of every job on a server without keys (everyone is the same user there)
MIN_KEY_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY = re.compile(r"[\x21-\x7e]+")


class ApiKeysError(ValueError):
    """The keys file cannot be used; the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Users:
    """The configured keys, each mapped to its user's name. Empty: no key required, every caller is ``ANONYMOUS``."""

    keys: tuple[tuple[bytes, str], ...] = field(default=(), repr=False)

    @property
    def required(self) -> bool:
        return bool(self.keys)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.keys)

    def identify(self, key: str) -> str | None:
        """The user whose key ``key`` is, or None. Every key is compared (constant time), whichever matches."""
        given = key.encode("utf-8", "surrogateescape")
        found = None
        for secret, name in self.keys:
            if hmac.compare_digest(given, secret) and found is None:
                found = name
        return found

    def describe(self) -> str:
        if not self.keys:
            return "not required (set FLUX_VECTOR_API_KEY or --api-keys FILE to require one)"
        names = ", ".join(self.names)
        return f"required (x-api-key or Authorization: Bearer); {len(self.keys)} user(s): {names}"


def load_users(api_keys_file: str | os.PathLike | None, env_key: str | None) -> Users:
    """The users of ``--api-keys FILE`` plus ``default`` for ``$FLUX_VECTOR_API_KEY``; ``ApiKeysError`` when the file
    is world-readable or malformed."""
    pairs: list[tuple[str, str, str]] = []  # (name, key, where)
    if api_keys_file is not None:
        pairs += read_api_keys(Path(api_keys_file))
    if env_key:
        pairs.append((DEFAULT_USER, env_key, "$FLUX_VECTOR_API_KEY"))
    names: dict[str, str] = {}
    keys: dict[str, str] = {}
    for name, key, where in pairs:
        if name in names:
            raise ApiKeysError(f"{where}: the user {name!r} is named twice (first at {names[name]})")
        if key in keys:
            raise ApiKeysError(f"{where}: the key of {name!r} is also the key of {keys[key]!r}; give each user its own")
        names[name], keys[key] = where, name
    return Users(tuple((key.encode("utf-8"), name) for key, name in keys.items()))


def read_api_keys(path: Path) -> list[tuple[str, str, str]]:
    """(name, key, "FILE:LINE") for every entry of a keys file, after checking its permissions and syntax."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ApiKeysError(f"--api-keys {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ApiKeysError(f"--api-keys {path}: cannot be read ({reason})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ApiKeysError(f"--api-keys {path}: not a regular file")
    if info.st_mode & stat.S_IROTH:
        raise ApiKeysError(
            f"--api-keys {path} is readable by every user of this machine (mode {stat.S_IMODE(info.st_mode):o}); "
            f"make it private first: chmod 600 {path}"
        )
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}:{number}"
        if len(words) != 2:
            raise ApiKeysError(
                f"{where}: a line must be NAME KEY (two words; # starts a comment), this one has {len(words)} word(s)"
            )
        name, key = words
        if not _NAME.fullmatch(name):
            raise ApiKeysError(f"{where}: the name {name[:64]!r} is not allowed; 1-64 of A-Z a-z 0-9 _ . -")
        if not _KEY.fullmatch(key) or len(key) < MIN_KEY_LENGTH:
            raise ApiKeysError(
                f"{where}: the key of {name!r} is not allowed; a key is at least {MIN_KEY_LENGTH} printable ASCII "
                "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        entries.append((name, key, where))
    if not entries:
        raise ApiKeysError(f"--api-keys {path}: no NAME KEY line in it")
    return entries


def key_from_headers(headers) -> str | None:
    """The key a request carries: ``x-api-key``, else ``Authorization: Bearer KEY``; None when it carries none."""
    given = headers.get("x-api-key")
    if given:
        return given
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
