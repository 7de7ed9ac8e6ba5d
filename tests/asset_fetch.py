"""What a client does with the URIs the gateway hands out: fetch them over HTTP(S), as a remote client would.

`stored_path` is the test's own reading of a media endpoint link (`…/media/{token}/{storage key}`): for a test
that must alter a stored file in place (a poisoned image), never for reading an asset.
"""

from __future__ import annotations

import shutil
import urllib.parse
import urllib.request
from pathlib import Path

_ROUTE = "/media/"


def fetch(uri: str, target: Path) -> Path:
    """Downloads `uri` (http or https only: every URI a client gets must be one) to `target`."""
    parsed = urllib.parse.urlparse(uri)
    assert parsed.scheme in ("http", "https"), f"a client cannot fetch {uri!r}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(uri, timeout=60) as response, target.open("wb") as stream:
        shutil.copyfileobj(response, stream)
    return target


def stored_path(uri: str, storage_root: Path) -> Path:
    """The file under `storage_root` that a media endpoint link names."""
    path = urllib.parse.urlparse(uri).path
    assert _ROUTE in path, uri
    _, _, rest = path.partition(_ROUTE)
    _token, _, key = rest.partition("/")
    return storage_root / urllib.parse.unquote(key)


def asset_named(uri: str) -> str:
    """What a URI leads to, whenever it was minted: a media endpoint link's storage key (its token, and so
    its expiry, differs per read); any other URI as it is."""
    path = urllib.parse.urlparse(uri).path
    if _ROUTE not in path:
        return uri
    _token, _, key = path.partition(_ROUTE)[2].partition("/")
    return urllib.parse.unquote(key)
