"""What the rest of the code needs to know about a URL: whether it names a store, whether it is a
pattern, how to show it without its credentials, and how to read a list file of them.

Local paths and ``file://`` URLs are local; anything else with a ``scheme://`` names a store that
fsspec opens with the job's storage options. ``pipe:`` (a shell command, webdataset's) is neither.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import fsspec

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_GLOB_CHARACTERS = re.compile(r"[*?\[]")
# In a list file, "#" after whitespace starts a comment, as in pip requirements files: URLs cannot
# hold raw whitespace, so "a.tar # note" loses its note while "a.tar#frag" stays whole.
_TRAILING_COMMENT = re.compile(r"\s+#.*")
_REDACTED_QUERY = "REDACTED"  # what replaces a query string in URLs written to rows, markers and logs


def has_scheme(url: str) -> bool:
    """True for ``scheme://...`` (``file://`` included); False for plain paths and ``pipe:``."""
    return bool(_SCHEME.match(url))


def is_remote(url: str) -> bool:
    """True when ``url`` names a store other than the local disk (storage options apply to it)."""
    return has_scheme(url) and not url.startswith(("file://", "local://"))


def options_for(url: str, storage_options: dict | None) -> dict:
    """The storage options that apply to ``url``: the store's for a remote URL, none for a local path."""
    return dict(storage_options or {}) if is_remote(url) else {}


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def is_glob(url: str) -> bool:
    """True when ``url`` holds a wildcard (``*``, ``?``, ``[``) in its path.

    A ``?`` that starts a query string (a signed URL: ``...tar?X-Amz-Signature=...``) is no wildcard.
    """
    if has_scheme(url) and "=" in urlsplit(url).query:
        return bool(_GLOB_CHARACTERS.search(urlsplit(url).path))
    return bool(_GLOB_CHARACTERS.search(url))


def glob_root(pattern: str) -> str:
    """The folders before the first wildcard: 'a/b/**/*.jpg' -> 'a/b'."""
    folders = []
    for part in pattern.split("/")[:-1]:
        if _GLOB_CHARACTERS.search(part):
            break
        folders.append(part)
    return "/".join(folders)


def redact_url(url: str) -> str:
    """The URL without userinfo, query string or fragment: safe for logs, rows and manifests.

    Signed URLs carry their credentials in the query string, so it is replaced by ``?REDACTED``.
    A ``pipe:`` command has each URL inside it redacted.
    """
    if is_pipe(url):
        return "pipe:" + " ".join(redact_url(part) if has_scheme(part) else part for part in url[5:].split(" "))
    if not has_scheme(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = _REDACTED_QUERY if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def lost_its_query(url: str) -> bool:
    """True for a URL that ``redact_url`` stripped of its query string (a signed URL: unusable now)."""
    return has_scheme(url) and urlsplit(url).query == _REDACTED_QUERY


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it redacted: error messages from HTTP and store clients quote the
    full URL they failed on, signature included."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def read_list_file(url: str, storage_options: dict | None = None, *, what: str = "URL list",
                   flag: str = "--input-list", entries: str = "URLs", folder_hint: str = "") -> list[str]:
    """The entries of a list file (local path or fsspec URL), one per line, in file order.

    Lines are stripped of whitespace (CRLF endings too) and a UTF-8 byte-order mark; blank lines,
    lines starting with ``#`` and trailing `` # comments`` are skipped. Entries are kept as written
    (patterns, globs, relative paths). Raises FileNotFoundError for a missing file and ValueError
    for a folder, a file that is not UTF-8 text, or a list with no entries; the messages call the
    file ``what``, name the ``flag`` it was given to and say what a line should hold.
    """
    one_per_line = f"{flag} takes a text file with one {entries.removesuffix('s')} per line"
    try:
        with fsspec.open(url, "rt", encoding="utf-8-sig", **options_for(url, storage_options)) as lines:
            found = [entry for entry in (_list_entry(line) for line in lines) if entry]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{what} {redact_url(url)} does not exist; check the path given to {flag} "
            "(and --storage-options for a remote store)") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {redact_url(url)} is a folder; {one_per_line}{folder_hint}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {redact_url(url)} is not UTF-8 text ({error.reason}); {one_per_line}") from None
    if not found:
        raise ValueError(f"{what} {redact_url(url)} has no {entries} (only blank lines and # comments)")
    return found


def _list_entry(line: str) -> str:
    """The entry on one line of a list file; empty for blank and comment lines."""
    line = line.strip()
    return "" if line.startswith("#") else _TRAILING_COMMENT.sub("", line)
