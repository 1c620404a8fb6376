"""Run-directory paths: a local path, or a ``gs://BUCKET/...`` URL (Google Cloud Storage).

Local paths behave exactly as plain ``os`` / ``open`` (nothing here changes them). ``gs://`` goes
through fsspec + gcsfs (``pip install -e '.[gcs]'``); orbax writes its checkpoints there by itself
(directories through ``etils.epath``, which uses gcsfs, arrays through tensorstore's own ``gcs``
driver). Any other URL scheme (``s3://``, ``memory://``, ``file://``, ...) is refused with one line:
only ``gs://`` is tested end to end (orbax, TensorBoard, WAV, metrics, log, resume).

Object stores cannot append, so the files a run appends to (``run.log``, ``metrics.jsonl``,
TensorBoard event files) are written to a local temporary copy (:class:`Staged`) and uploaded whole
at the host's flush points (every block of generations, before each checkpoint, and at the end).

Emulator: with ``STORAGE_EMULATOR_HOST=http://localhost:PORT`` set (which gcsfs honours), the first
``gs://`` path checked also points tensorstore there (``TENSORSTORE_GCS_HTTP_URL``, and a dummy
``GOOGLE_AUTH_TOKEN_FOR_TESTING`` since an emulator needs no credentials) and turns off gcsfs'
gRPC bucket-layout probe (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: emulators speak JSON only),
unless those variables are already set.
"""

from __future__ import annotations

import builtins
import os
import posixpath
import re
import shutil
import tempfile

from lvns_jax.errors import LvnsError

#: URL schemes that work end to end for a run directory
SUPPORTED_SCHEMES = ("gs",)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str | None:
    """``"gs"`` for ``gs://b/x``; None for a local path."""
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else None


def _emulator_defaults() -> None:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    url = host if "://" in host else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url.rstrip("/"))
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def check(path: str) -> None:
    """Refuse, with one line, a URL whose scheme is not supported or whose package is missing."""
    s = scheme(path)
    if s is None:
        return
    if s not in SUPPORTED_SCHEMES:
        raise LvnsError(f"{path}: {s}:// is not supported for run directories (a local path or gs://BUCKET/...)")
    if not re.match(r"^gs://[^/]+", str(path)):
        raise LvnsError(f"{path}: expected gs://BUCKET/PATH")
    _emulator_defaults()
    try:
        import fsspec  # noqa: F401
        import gcsfs  # noqa: F401
    except ImportError:
        raise LvnsError(f"{path}: gs:// run directories need fsspec and gcsfs: pip install -e '.[gcs]'") from None


def is_remote(path: str) -> bool:
    check(path)
    return scheme(path) is not None


def _fs(path: str):
    import fsspec

    check(path)
    return fsspec.core.url_to_fs(path)


def join(path: str, *parts: str) -> str:
    if scheme(path) is None:
        return os.path.join(path, *parts)
    return posixpath.join(path, *parts)


def abspath(path: str) -> str:
    return path if scheme(path) else os.path.abspath(path)


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/")) if scheme(path) else os.path.basename(os.path.normpath(path))


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs, p = _fs(path)
    return fs.exists(p)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    fs, p = _fs(path)
    return fs.isfile(p)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    fs, p = _fs(path)
    return fs.isdir(p)


def makedirs(path: str) -> None:
    """``os.makedirs(exist_ok=True)``; for gs:// (no directories there) only checks that the bucket
    exists, so a wrong bucket fails before anything is computed."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, p = _fs(path)
    bucket = p.split("/", 1)[0]
    try:
        ok = fs.exists(bucket)
    except Exception as e:  # auth / network: one line
        raise LvnsError(f"gs://{bucket}: cannot reach the bucket ({type(e).__name__}: {e})") from None
    if not ok:
        raise LvnsError(f"gs://{bucket}: no such bucket (or no access to it)")


def listdir(path: str) -> list[str]:
    if not is_remote(path):
        return os.listdir(path)
    fs, p = _fs(path)
    return sorted(posixpath.basename(x.rstrip("/")) for x in fs.ls(p, detail=False) if x.rstrip("/") != p.rstrip("/"))


def open(path: str, mode: str = "r"):  # noqa: A001 - mirrors builtins.open
    """``open(path, mode)`` for local paths; an fsspec file object for gs:// (no appending there)."""
    if not is_remote(path):
        return builtins.open(path, mode)
    if "a" in mode or "+" in mode:
        raise ValueError(f"{path}: mode {mode!r} is not possible on an object store (use Staged)")
    fs, p = _fs(path)
    return fs.open(p, mode)


def write_files(files: dict[str, bytes]) -> None:
    """Write several files at once (concurrent uploads for gs://)."""
    remote = {}
    for path, data in files.items():
        if is_remote(path):
            remote[path] = data
        else:
            with builtins.open(path, "wb") as f:
                f.write(data)
    if remote:
        fs, _ = _fs(next(iter(remote)))
        fs.pipe({_fs(k)[1]: v for k, v in remote.items()})


def download(path: str, local: str) -> None:
    fs, p = _fs(path)
    fs.get_file(p, local)


def upload(local: str, path: str) -> None:
    fs, p = _fs(path)
    fs.put_file(local, p)


class Staged:
    """A file (or folder) that is appended to locally and lives at ``path``.

    Local ``path``: ``local`` is ``path`` itself and :meth:`sync` does nothing. gs://: ``local`` is
    in a temporary folder (with the remote file's content first when ``fetch`` is set and it
    exists) and :meth:`sync` uploads it whole (a folder: every file that changed since the last
    sync); :meth:`close` syncs and removes the temporary copy.
    """

    def __init__(self, path: str, fetch: bool = False, folder: bool = False):
        self.path = path
        self.remote = is_remote(path)
        self._tmp = None
        self._sent: dict[str, tuple[int, int]] = {}
        if not self.remote:
            self.local = path
            return
        self._tmp = tempfile.mkdtemp(prefix="lvns-staged-")
        self.local = os.path.join(self._tmp, basename(path))
        if folder:
            os.makedirs(self.local)
        elif fetch and isfile(path):
            download(path, self.local)

    def sync(self) -> None:
        if not self.remote or not os.path.exists(self.local):
            return
        if os.path.isdir(self.local):
            for name in sorted(os.listdir(self.local)):
                self.sync_file(name)
        else:
            upload(self.local, self.path)

    def sync_file(self, name: str) -> None:
        """Upload the folder's file ``name`` if it changed since it was last uploaded."""
        local = os.path.join(self.local, name)
        st = os.stat(local)
        stamp = (st.st_size, st.st_mtime_ns)
        if self._sent.get(name) != stamp:
            upload(local, join(self.path, name))
            self._sent[name] = stamp

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
