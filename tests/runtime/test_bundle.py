"""The bundler: import allowlist, the XState major rules, archives, sizes, located errors, and the
pre-built modules the official smply CLI uploads."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from runtime import BundleError, Bundler, Upload
from runtime.bundle import MAX_ARCHIVE_FILES as MAX_MEMBERS

MACHINE = b"""import { createMachine } from "%s";
export default createMachine({ id: "m", initial: "a", states: { a: {} } });
export const allowRead = () => true;
export const allowWrite = () => true;
"""


def machine(specifier: str = "xstate") -> bytes:
    return MACHINE % specifier.encode()


@pytest.mark.parametrize(
    ("specifier", "declared", "major"),
    [
        ("xstate", None, 4),
        ("xstate", 5, 5),
        ("npm:xstate", None, 4),
        ("npm:xstate@4", None, 4),
        ("npm:xstate@5", None, 5),
        ("npm:xstate@5", 5, 5),
    ],
)
def test_the_xstate_major_follows_the_specifier_then_the_declaration(bundler, specifier, declared, major):
    bundle = bundler.bundle(Upload("machine.ts", machine(specifier), xstate_major=declared))
    assert bundle.xstate_major == major
    assert "__m" in bundle.code
    assert len(bundle.hash) == 64


def test_npm_xstate_sub_paths_map_to_the_esm_build_without_duplicating_xstate(bundler):
    source = (
        machine("npm:xstate")
        + b'import { isBuiltInEvent } from "npm:xstate/lib/utils";\nconsole.log(isBuiltInEvent);\n'
    )
    plain = bundler.bundle(Upload("machine.ts", machine("npm:xstate")))
    with_sub = bundler.bundle(Upload("machine.ts", source))
    assert with_sub.xstate_major == 4
    # The alias npm:xstate/lib -> xstate/es keeps one copy of XState's internals (runtime-semantics 2.4).
    assert len(with_sub.code) < len(plain.code) * 1.1


@pytest.mark.parametrize(
    ("source", "code"),
    [
        (machine("npm:xstate@5"), None),
        (machine("npm:xstate@3"), "unsupported-xstate"),
        (machine("npm:xstate@4") + b'import "npm:xstate@5";\n', "conflicting-xstate"),
    ],
)
def test_major_conflicts_are_rejected(bundler, source, code):
    if code is None:
        with pytest.raises(BundleError, match="declares XState 4") as info:
            bundler.bundle(Upload("machine.ts", source, xstate_major=4))
        assert info.value.code == "conflicting-xstate"
    else:
        with pytest.raises(BundleError) as info:
            bundler.bundle(Upload("machine.ts", source))
        assert info.value.code == code


@pytest.mark.parametrize(
    "specifier",
    [
        "/etc/hostname",
        "/etc/passwd.json",
        "../../../etc/passwd.json",
        "lodash",
        "node:fs",
        "fs",
        "https://example.com/x.js",
    ],
)
def test_imports_outside_the_upload_and_the_allowlist_are_rejected_by_name(bundler, specifier):
    source = machine() + f'import secret from "{specifier}";\nconsole.log(secret);\n'.encode()
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("machine.ts", source))
    assert info.value.code in ("forbidden-import", "build-failed")
    assert specifier in str(info.value)


def test_a_secret_file_is_never_inlined(bundler, tmp_path: Path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    source = machine() + f'import s from "{secret}";\nconsole.log(s);\n'.encode()
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("machine.ts", source))
    assert "hunter2" not in str(info.value)
    assert info.value.code == "forbidden-import"


def test_syntax_errors_come_back_with_file_line_and_column(bundler):
    source = b'import { createMachine } from "xstate";\nconst x: number = ;\nexport default createMachine({});\n'
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("machine.ts", source))
    error = info.value
    assert error.code == "build-failed"
    (diag,) = error.diagnostics
    assert (diag.file, diag.line, diag.column) == ("machine.ts", 2, 19)
    assert diag.line_text == "const x: number = ;"
    assert "machine.ts:2:19" in str(error)


def _tar(files: dict[str, bytes], root: str = "") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(root + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


PROJECT = {
    "src/machine.ts": b'import { createMachine } from "xstate";\nimport { initial } from "./states";\n'
    b'export default createMachine({ id: "m", initial, states: { idle: {} } });\n'
    b"export const allowRead = () => true;\nexport const allowWrite = () => true;\n",
    "src/states.ts": b'export const initial: string = "idle";\n',
}


@pytest.mark.parametrize("pack", [_tar, _zip])
def test_archives_of_small_projects_bundle_from_their_named_entry(bundler, pack):
    data = pack(PROJECT)
    name = "project.tar.gz" if pack is _tar else "project.zip"
    bundle = bundler.bundle(Upload(name, data, entry="src/machine.ts"))
    assert bundle.xstate_major == 4
    assert '"idle"' in bundle.code


def test_archive_package_json_declares_xstate_5_and_its_entry(bundler, engine):
    files = {
        **{k: v.replace(b'"xstate"', b'"xstate"') for k, v in PROJECT.items()},
        "package.json": b'{"name": "p", "main": "src/machine.ts", "dependencies": {"xstate": "^5.19.0"}}',
    }
    bundle = bundler.bundle(Upload("p.tgz", _tar(files, root="project/")))
    assert bundle.xstate_major == 5
    assert engine.prepare(bundle).major == 5


@pytest.mark.parametrize(
    ("files", "code"),
    [
        ({"../evil.ts": b"x"}, "unsafe-archive"),
        ({"/abs.ts": b"x"}, "unsafe-archive"),
        ({"node_modules/xstate/index.js": b"x", "index.ts": b"x"}, "unsafe-archive"),
        ({"other.ts": b"x"}, "bad-entry"),
    ],
)
def test_unsafe_or_incomplete_archives_are_rejected(bundler, files, code):
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("p.zip", _zip(files)))
    assert info.value.code == code


def test_archive_symlinks_are_rejected(bundler):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        link = tarfile.TarInfo("index.ts")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("p.tar.gz", out.getvalue()))
    assert info.value.code == "unsafe-archive"


def test_size_limits(bundler):
    # Random-looking text does not compress: over 1 MB gzipped while under 10 MB raw.
    blob = os.urandom(900_000).hex().encode()
    incompressible = Upload("machine.js", machine() + b"export const blob = '" + blob + b"';\n")
    with pytest.raises(BundleError, match="gzipped") as info:
        bundler.bundle(incompressible)
    assert info.value.code == "too-large"
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("machine.js", b" " * 10_000_001))
    assert info.value.code == "too-large"
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("machine.exe", b"MZ"))
    assert info.value.code == "unsupported-upload"


def _smply_build(bundler: Bundler, tmp_path: Path, source: bytes, xstate_dir: str, external: bool) -> bytes:
    """Build an upload the way smply does: esbuild --bundle --format=esm, XState inlined (0.1.18)
    or left as an external `npm:xstate` import (0.1.21)."""
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "xstate").symlink_to(bundler.js_deps / xstate_dir)
    (tmp_path / "m.ts").write_bytes(source)
    args = [
        str(bundler.esbuild),
        "m.ts",
        "--bundle",
        "--format=esm",
        "--platform=neutral",
        "--main-fields=module,main",
        "--minify",
        "--outfile=out.js",
        "--log-level=error",
    ]
    if external:
        args.append("--external:npm:xstate")
    subprocess.run(args, cwd=tmp_path, check=True)
    return (tmp_path / "out.js").read_bytes()


V4_SOURCE = b"""import { createMachine, assign, spawn } from "%s";
const child = createMachine({ id: "kid", initial: "a", states: { a: { entry: "ping" }, b: { type: "final" } } });
export default createMachine({
  id: "parent", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 } },
  states: { idle: { on: {
    inc: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) },
    spawn: { actions: assign({ kid: () => globalThis.__statebacked_rt.spawn(child, "kid") }) },
  } } },
});
export const allowRead = () => true;
export const allowWrite = () => true;
"""


@pytest.mark.parametrize("flavour", ["inlined", "npm-external"])
async def test_smply_prebuilt_v4_modules_run(bundler, engine, executor, transport, clock, tmp_path, flavour):
    from tests.support import local

    external = flavour == "npm-external"
    source = V4_SOURCE % (b"npm:xstate" if external else b"xstate")
    prebuilt = _smply_build(bundler, tmp_path, source, "xstate4", external)
    assert (b"npm:xstate" in prebuilt) is external
    bundle = bundler.bundle(Upload("bundle.js", prebuilt))
    assert bundle.self_contained is not external
    prepared = engine.prepare(bundle)
    assert prepared.major == 4
    inst = local(prepared, executor, transport, clock)
    await inst.create()
    await inst.send("inc")
    result = await inst.send("spawn")
    assert result.ok, result.error
    assert inst.current is not None and inst.current.public_context == {"n": 1}


async def test_smply_prebuilt_v5_module_with_its_own_xstate_is_detected_as_v5(
    bundler, engine, executor, transport, clock, tmp_path
):
    from tests.support import local

    source = b"""import { createMachine, assign } from "xstate";
export default createMachine({ id: "m", initial: "idle", context: { public: { n: 0 } },
  states: { idle: { on: { inc: { actions: assign({ public: ({ context }) => ({ n: context.public.n + 1 }) }) } } } } });
export const allowRead = () => true;
export const allowWrite = () => true;
"""
    prebuilt = _smply_build(bundler, tmp_path, source, "xstate5", external=False)
    bundle = bundler.bundle(Upload("bundle.js", prebuilt))
    assert bundle.self_contained
    prepared = engine.prepare(bundle)
    assert prepared.major == 5
    inst = local(prepared, executor, transport, clock)
    await inst.create()
    await inst.send("inc")
    await inst.send("inc")
    assert inst.current is not None and inst.current.public_context == {"n": 2}


@pytest.mark.parametrize("loader", ['with { type: "json" }', 'with { type: "text" }', ""])
def test_failed_builds_never_quote_host_files(bundler, tmp_path: Path, loader):
    secret = tmp_path / "secret.env"
    secret.write_text("API_TOKEN=sk-live-supersecret-123\n")
    for target in (str(secret), "/etc/passwd"):
        source = f'import s from "{target}" {loader};\nexport default s;\n'.encode()
        with pytest.raises(BundleError) as info:
            bundler.bundle(Upload("machine.ts", source))
        text = str(info.value) + repr(info.value.diagnostics)
        assert "supersecret" not in text and "root:" not in text
        assert info.value.code in ("forbidden-import", "build-failed")


def test_archives_cannot_expand_beyond_the_member_cap_or_use_other_compressors(bundler):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for n in range(MAX_MEMBERS + 1):
            info = tarfile.TarInfo(f"d{n}")
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
    with pytest.raises(BundleError, match="more than") as info:
        bundler.bundle(Upload("p.tar.gz", out.getvalue()))
    assert info.value.code == "too-large"
    xz = io.BytesIO()
    with tarfile.open(fileobj=xz, mode="w:xz") as archive:
        data = b"export default 1;"
        member = tarfile.TarInfo("index.ts")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("p.tar.gz", xz.getvalue()))
    assert info.value.code == "bad-archive"


@pytest.mark.parametrize("files", [{".": b"x"}, {"a": b"x", "a/b.ts": b"y"}, {"a/b.ts": b"y", "a": b"x"}])
def test_odd_archive_members_are_bundle_errors(bundler, files):
    with pytest.raises(BundleError) as info:
        bundler.bundle(Upload("p.zip", _zip(files)))
    assert info.value.code == "unsafe-archive"
