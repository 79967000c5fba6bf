"""Turn an upload into the one script the sandbox evaluates, with the esbuild native binary.

Decision log:

- esbuild runs as a subprocess (the native binary from the npm ``esbuild`` package); node is not
  needed at run time. PyPI's esbuild-py cannot bundle and returns ``''`` for TypeScript.
- Every upload is built in a fresh, empty folder holding only the upload (``src/``), a generated
  entry and symlinks to the allowed packages. esbuild reads any file an import names, so after the
  build the metafile is checked: every input must lie inside ``src/`` or an allowed package, and no
  import may be left external. The check names the offending import.
- The entry re-exports the user's module *and* XState's runtime API (``interpret`` for v4,
  ``createActor`` for v5) from the same XState copy. An upload that inlines its own XState (smply
  0.1.18, ``--js`` bundles) imports no xstate at all: it is built without a runtime API, its major is
  detected in the sandbox, and the runtime API of that major is loaded beside it.
- ``npm:xstate`` means XState 4 (State Backed's meaning); ``npm:xstate@4`` and ``npm:xstate@5`` are
  statehost extensions; a bare ``xstate`` import follows the declared major, then the archive's
  package.json, then 4.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import re
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import resources
from .errors import BundleError, Diagnostic, HostError

__all__ = ["Bundler", "MachineBundle", "Upload", "find_js_deps"]

MAX_GZIP_BYTES = 1_000_000
MAX_RAW_BYTES = 10_000_000
MAX_ARCHIVE_FILES = 1_000
BUNDLE_TIMEOUT_S = 30.0

SOURCE_SUFFIXES = (".ts", ".mts", ".cts", ".tsx", ".js", ".mjs", ".cjs", ".jsx")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
DEFAULT_ENTRIES = ("index.ts", "index.js", "machine.ts", "machine.js", "src/index.ts", "src/index.js")

# Import specifiers in JS/TS text: `from "x"`, `import "x"`, `import("x")`, `require("x")`.
_SPECIFIER = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)(["'])([^"'\n]+)\1""")
_NPM_XSTATE = re.compile(r"^npm:xstate(?:@(\d+)[^/]*)?(?:/.*)?$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
_ESBUILD_ERROR = re.compile(r"^✘ \[ERROR\] (.*)$")
_ESBUILD_LOCATION = re.compile(r"^\s+(.+?):(\d+):(\d+):$")
_ESBUILD_LINE_TEXT = re.compile(r"^\s+\d+ │ (.*)$")

RUNTIME_API = {4: "export { interpret, spawn } from 'xstate';", 5: "export { createActor } from 'xstate';"}


@dataclass(frozen=True)
class Upload:
    """What a user uploaded: one source file, a pre-built ES module, or an archive of a project."""

    filename: str
    """Name of the uploaded file; its suffix says what it is (.ts/.js/.mjs, .tar.gz/.tgz/.zip)."""
    data: bytes
    entry: str | None = None
    """For archives: the path of the entry module inside the archive."""
    xstate_major: int | None = None
    """The major the uploader declared (statehost's own field); None = decide from the upload."""


@dataclass(frozen=True)
class MachineBundle:
    """The script the sandbox evaluates. It defines the global ``__m``."""

    code: str
    xstate_major: int | None
    """4 or 5; None when the upload inlines its own XState and the major is detected at prepare."""
    hash: str
    """sha256 of ``code``: the cache key of everything derived from this bundle."""

    @property
    def self_contained(self) -> bool:
        """True when the upload carries its own XState copy (the runtime API is loaded beside it)."""
        return self.xstate_major is None


def find_js_deps() -> Path:
    """The node_modules folder that holds esbuild, xstate4, xstate5 and @statebacked/machine."""
    return resources.js_deps_dir()


class Bundler:
    """Builds uploads with the esbuild binary. Thread-safe: every build has its own folder."""

    def __init__(self, js_deps: Path | None = None, esbuild: Path | None = None) -> None:
        self.js_deps = js_deps or find_js_deps()
        self.esbuild = esbuild or resources.esbuild_binary(self.js_deps)
        self._runtime_api: dict[int, str] = {}

    @property
    def esbuild_version(self) -> str:
        out = subprocess.run([str(self.esbuild), "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    # -- public API ---------------------------------------------------------------------------------

    def bundle(self, upload: Upload, *, machine: bool = True) -> MachineBundle:
        """Bundle an upload; raises :class:`BundleError` with a stable code for any bad input.

        ``machine=False`` bundles a module that is not a machine (a migration): the same rules,
        without XState's runtime API beside it.
        """
        files, entry, package_json = _read_upload(upload)
        major = _resolve_major(files, upload.xstate_major, package_json)
        with tempfile.TemporaryDirectory(prefix="statehost-build-") as tmp:
            build = Path(tmp)
            _write_files(build / "src", files)
            entry_lines = [f"export * as user from './src/{entry}';"]
            if major is not None and machine:
                entry_lines.append(RUNTIME_API[major])
            (build / "__entry.js").write_text("\n".join(entry_lines) + "\n")
            code = self._build(build, major if major is not None else 4)
        return self._finish(code, major)

    def runtime_api(self, major: int) -> str:
        """XState's runtime API of one major as a script defining ``__statehost_xstate``.

        Loaded next to self-contained bundles, whose own XState copy has no interpreter we can use.
        """
        if major not in self._runtime_api:
            with tempfile.TemporaryDirectory(prefix="statehost-build-") as tmp:
                build = Path(tmp)
                (build / "src").mkdir()
                (build / "__entry.js").write_text(RUNTIME_API[major] + "\n")
                self._runtime_api[major] = self._build(build, major, global_name="__statehost_xstate")
        return self._runtime_api[major]

    # -- internals ----------------------------------------------------------------------------------

    def _build(self, build: Path, major: int, global_name: str = "__m") -> str:
        modules = build / "node_modules"
        (modules / "@statebacked").mkdir(parents=True)
        (modules / "xstate").symlink_to(self.js_deps / f"xstate{major}", target_is_directory=True)
        (modules / "@statebacked" / "machine").symlink_to(
            self.js_deps / "@statebacked" / "machine", target_is_directory=True
        )
        args = [
            str(self.esbuild),
            "__entry.js",
            "--bundle",
            "--format=iife",
            f"--global-name={global_name}",
            "--platform=neutral",
            "--main-fields=module,main",
            "--target=es2020",
            '--define:process.env.NODE_ENV="production"',
            # Smaller code parses faster in every fresh sandbox; --keep-names keeps Function.name,
            # from which XState 4 derives the type of inline actions.
            "--minify",
            "--keep-names",
            "--tsconfig-raw={}",
            "--metafile=meta.json",
            "--outfile=out.js",
            "--log-level=error",
            "--color=false",
            "--charset=utf8",
            f"--alias:npm:xstate@{major}=xstate",
            "--alias:npm:xstate=xstate",
        ]
        if major == 4:
            args.append("--alias:npm:xstate/lib=xstate/es")
        try:
            proc = subprocess.run(
                args, cwd=build, capture_output=True, text=True, timeout=BUNDLE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BundleError("bundle-timeout", f"bundling took longer than {BUNDLE_TIMEOUT_S:.0f} s") from exc
        except OSError as exc:
            raise HostError(f"cannot run esbuild at {self.esbuild}: {exc}") from exc
        if proc.returncode != 0:
            diagnostics = _parse_esbuild_errors(proc.stderr)
            if not diagnostics:
                raise HostError(f"esbuild failed without a diagnostic: {proc.stderr.strip()[:2000]}")
            # esbuild reads imported host files before the allowlist below can run, and its messages
            # quote them ("Unexpected "root" in JSON"). A diagnostic located outside the upload and
            # the allowed packages is therefore never passed on: only the path the import named is.
            for diag in diagnostics:
                if diag.file is not None and not self._inside_allowed(build, diag.file):
                    raise _forbidden(diag.file, "the upload")
            raise BundleError("build-failed", "the upload could not be bundled", diagnostics)
        self._check_inputs(build, json.loads((build / "meta.json").read_text()))
        return (build / "out.js").read_text()

    def _allowed_roots(self, build: Path) -> list[Path]:
        return [
            (build / "src").resolve(),
            (self.js_deps / "xstate4").resolve(),
            (self.js_deps / "xstate5").resolve(),
            (self.js_deps / "@statebacked" / "machine").resolve(),
        ]

    def _inside_allowed(self, build: Path, reported: str) -> bool:
        """Whether a path esbuild reported (relative to the build folder, or with src/ stripped)."""
        if reported.startswith("<"):  # <stdin>, <runtime>
            return True
        for candidate in (build / reported, build / "src" / reported):
            path = candidate.resolve()
            if path == (build / "__entry.js").resolve() or any(
                path.is_relative_to(r) for r in self._allowed_roots(build)
            ):
                return True
        return False

    def _check_inputs(self, build: Path, meta: dict[str, object]) -> None:
        """Reject the build if any input lies outside the upload and the allowed packages."""
        allowed_roots = self._allowed_roots(build)
        entry = (build / "__entry.js").resolve()
        inputs = meta.get("inputs")
        if not isinstance(inputs, dict):
            raise HostError("esbuild metafile has no inputs")
        for importer, info in inputs.items():
            for record in info.get("imports", []):
                specifier = record.get("original", record.get("path"))
                if record.get("path") == "<runtime>":
                    continue  # esbuild's own helpers (e.g. __name for --keep-names), not a file
                if record.get("external"):
                    raise _forbidden(specifier, importer)
            path = (build / importer).resolve()
            if path != entry and not any(path.is_relative_to(root) for root in allowed_roots):
                raise _forbidden(_importer_of(inputs, importer) or importer, importer)

    def _finish(self, code: str, major: int | None) -> MachineBundle:
        raw = code.encode()
        if len(raw) > MAX_RAW_BYTES:
            raise BundleError("too-large", f"the bundle is {len(raw)} bytes; the limit is {MAX_RAW_BYTES}")
        return MachineBundle(code=code, xstate_major=major, hash=hashlib.sha256(raw).hexdigest())


def _forbidden(specifier: str, importer: str) -> BundleError:
    where = importer.removeprefix("src/")
    return BundleError(
        "forbidden-import",
        f'import of "{specifier}" in {where} is not allowed: imports must stay inside the upload or '
        "name xstate, npm:xstate[@4|@5][/...] or @statebacked/machine",
        (Diagnostic(message=f'forbidden import "{specifier}"', file=where),),
    )


def _importer_of(inputs: dict[str, dict[str, list[dict[str, str]]]], target: str) -> str | None:
    for info in inputs.values():
        for record in info.get("imports", []):
            if record.get("path") == target:
                return record.get("original", target)
    return None


def _parse_esbuild_errors(stderr: str) -> tuple[Diagnostic, ...]:
    diagnostics: list[Diagnostic] = []
    lines = stderr.splitlines()
    for index, line in enumerate(lines):
        match = _ESBUILD_ERROR.match(line)
        if not match:
            continue
        message, file, row, col, text = match.group(1), None, None, None, None
        for follow in lines[index + 1 : index + 6]:
            loc = _ESBUILD_LOCATION.match(follow)
            if loc and file is None:
                file, row, col = loc.group(1).removeprefix("src/"), int(loc.group(2)), int(loc.group(3)) + 1
                continue
            code_line = _ESBUILD_LINE_TEXT.match(follow)
            if code_line and text is None:
                text = code_line.group(1)
        diagnostics.append(Diagnostic(message=message, file=file, line=row, column=col, line_text=text))
    return tuple(diagnostics)


# -- reading uploads --------------------------------------------------------------------------------


def _read_upload(upload: Upload) -> tuple[dict[str, bytes], str, dict[str, object] | None]:
    """Return the upload's files (safe relative paths), the entry path and its package.json."""
    name = upload.filename.lower()
    if len(upload.data) > MAX_RAW_BYTES:
        raise BundleError("too-large", f"the upload is {len(upload.data)} bytes; the limit is {MAX_RAW_BYTES}")
    if name.endswith(ARCHIVE_SUFFIXES):
        if len(upload.data) > MAX_GZIP_BYTES:
            raise BundleError("too-large", f"the archive is {len(upload.data)} bytes; the limit is {MAX_GZIP_BYTES}")
        files = _read_zip(upload.data) if name.endswith(".zip") else _read_tar(upload.data)
        package_json = _package_json(files)
        entry = _archive_entry(files, upload.entry, package_json)
        return files, entry, package_json
    if not name.endswith(SOURCE_SUFFIXES):
        raise BundleError(
            "unsupported-upload",
            f"cannot tell what {upload.filename!r} is: expected a .ts/.js/.mjs module or a .tar.gz/.zip archive",
        )
    if len(gzip.compress(upload.data, 6)) > MAX_GZIP_BYTES:
        raise BundleError("too-large", f"the upload is over {MAX_GZIP_BYTES} bytes gzipped")
    base = PurePosixPath(upload.filename.replace("\\", "/")).name
    safe_name = base if _SAFE_NAME.match(base) else "machine" + PurePosixPath(name).suffix
    return {safe_name: upload.data}, safe_name, None


def _safe_member(name: str) -> str:
    path = posixpath.normpath(name.replace("\\", "/"))
    if path in (".", "") or not PurePosixPath(path).parts:
        raise BundleError("unsafe-archive", f"archive member {name!r} has no file name")
    if name.startswith(("/", "\\")) or path.startswith("..") or ":" in PurePosixPath(path).parts[0]:
        raise BundleError("unsafe-archive", f"archive member {name!r} points outside the archive")
    if "node_modules" in PurePosixPath(path).parts:
        raise BundleError(
            "unsafe-archive",
            f"archive member {name!r} is inside node_modules: dependencies come from the server "
            "(xstate, @statebacked/machine), not the archive",
        )
    return path


def _add_member(files: dict[str, bytes], name: str, data: bytes, total: int) -> int:
    if len(files) >= MAX_ARCHIVE_FILES:
        raise BundleError("too-large", f"the archive has more than {MAX_ARCHIVE_FILES} files")
    total += len(data)
    if total > MAX_RAW_BYTES:
        raise BundleError("too-large", f"the archive unpacks to more than {MAX_RAW_BYTES} bytes")
    path = _safe_member(name)
    parents = {str(p) for p in PurePosixPath(path).parents if str(p) != "."}
    if path in files or parents & files.keys() or any(f.startswith(path + "/") for f in files):
        raise BundleError("unsafe-archive", f"archive member {name!r} clashes with another member")
    files[path] = data
    return total


def _read_tar(data: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    members = 0
    try:
        # Only gzip: tarfile's "r:*" would also accept xz/bz2, whose ratios defeat the size caps.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:
                members += 1
                if members > MAX_ARCHIVE_FILES:
                    raise BundleError("too-large", f"the archive has more than {MAX_ARCHIVE_FILES} members")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleError("unsafe-archive", f"archive member {member.name!r} is not a regular file")
                if member.size + total > MAX_RAW_BYTES:
                    raise BundleError("too-large", f"the archive unpacks to more than {MAX_RAW_BYTES} bytes")
                extracted = archive.extractfile(member)
                assert extracted is not None
                total = _add_member(files, member.name, extracted.read(), total)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError("bad-archive", f"cannot read the archive: {exc}") from exc
    return files


def _read_zip(data: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000):
                    raise BundleError("unsafe-archive", f"archive member {info.filename!r} is not a regular file")
                if info.file_size + total > MAX_RAW_BYTES:
                    raise BundleError("too-large", f"the archive unpacks to more than {MAX_RAW_BYTES} bytes")
                total = _add_member(files, info.filename, archive.read(info), total)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError("bad-archive", f"cannot read the archive: {exc}") from exc
    return files


def _wrapper_prefix(files: dict[str, bytes]) -> str:
    """`tar czf p.tgz project/` puts everything under `project/`: entries are also looked up there."""
    roots = {PurePosixPath(p).parts[0] for p in files}
    if len(roots) == 1 and all(len(PurePosixPath(p).parts) > 1 for p in files):
        return roots.pop() + "/"
    return ""


def _package_json(files: dict[str, bytes]) -> dict[str, object] | None:
    raw = files.get("package.json", files.get(_wrapper_prefix(files) + "package.json"))
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError("bad-archive", f"package.json is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BundleError("bad-archive", "package.json is not a JSON object")
    return parsed


def _archive_entry(files: dict[str, bytes], entry: str | None, package_json: dict[str, object] | None) -> str:
    candidates: list[str] = []
    if entry:
        candidates.append(_safe_member(entry))
    elif package_json:
        for key in ("module", "main"):
            value = package_json.get(key)
            if isinstance(value, str):
                candidates.append(_safe_member(value))
    candidates.extend(() if entry else DEFAULT_ENTRIES)
    prefix = _wrapper_prefix(files)
    if prefix:
        candidates = [c for candidate in candidates for c in (candidate, prefix + candidate)]
    for candidate in candidates:
        if candidate in files:
            if not candidate.endswith(SOURCE_SUFFIXES):
                raise BundleError("bad-entry", f"the entry {candidate!r} is not a .ts/.js module")
            return candidate
    wanted = entry or " or ".join(DEFAULT_ENTRIES)
    raise BundleError("bad-entry", f"the archive has no entry module {wanted}")


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# -- the XState major -------------------------------------------------------------------------------


def _specifiers(files: dict[str, bytes]) -> Iterable[str]:
    for rel, data in files.items():
        if rel.endswith(SOURCE_SUFFIXES):
            text = data.decode("utf-8", errors="replace")
            for match in _SPECIFIER.finditer(text):
                yield match.group(2)


def _resolve_major(files: dict[str, bytes], declared: int | None, package_json: dict[str, object] | None) -> int | None:
    """The XState major to bundle against, or None for an upload that inlines its own XState."""
    if declared is not None and declared not in (4, 5):
        raise BundleError("unsupported-xstate", f"XState {declared} is not supported; use 4 or 5")
    implied: set[int] = set()
    bare = False
    for spec in _specifiers(files):
        npm = _NPM_XSTATE.match(spec)
        if npm:
            implied.add(int(npm.group(1)) if npm.group(1) else 4)
        elif spec == "xstate" or spec.startswith("xstate/"):
            bare = True
    unsupported = implied - {4, 5}
    if unsupported:
        raise BundleError("unsupported-xstate", f"XState {min(unsupported)} is not supported; use 4 or 5")
    if len(implied) > 1:
        raise BundleError("conflicting-xstate", "the upload imports both npm:xstate@4 and npm:xstate@5")
    if implied and declared is not None and declared not in implied:
        raise BundleError(
            "conflicting-xstate",
            f"the upload imports XState {implied.pop()} (npm:xstate) but declares XState {declared}",
        )
    if implied:
        return implied.pop()
    if declared is not None:
        return declared
    if bare:
        return _package_json_major(package_json) or 4
    return None


def _package_json_major(package_json: dict[str, object] | None) -> int | None:
    if not package_json:
        return None
    for key in ("dependencies", "peerDependencies", "devDependencies"):
        deps = package_json.get(key)
        if isinstance(deps, dict) and isinstance(deps.get("xstate"), str):
            match = re.search(r"(\d+)", deps["xstate"])
            if match:
                major = int(match.group(1))
                if major not in (4, 5):
                    raise BundleError("unsupported-xstate", f"package.json asks for XState {major}; use 4 or 5")
                return major
    return None
