"""Build statehost's wheel for one platform: ``make wheel`` (issue 19).

    .venv/bin/python tools/build_wheel.py [--out dist] [--platform linux-x64]

The wheel carries everything a server needs besides its PyPI dependencies, so that
``pip install statehost-<version>-py3-none-<platform>.whl`` then ``statehost serve`` works on a
machine without node or npm. Under ``runtime/resources-data/`` (runtime/resources.py looks there):

- ``node_modules/``: the npm packages bundling resolves imports against (``xstate4``, ``xstate5``,
  ``@statebacked/machine``) and ``@esbuild/<platform>`` with esbuild's native binary, each checked
  against its pin in package-lock.json (the version ``npm ci`` installed; a platform other than this
  machine's is fetched with ``npm pack`` and checked against the lock's SHA-512);
- ``js_shims/`` (without its tests), ``dashboard/dist/`` (the built dashboard), ``wasm/guest.c``
  and the WASM guest, prebuilt (docs/decisions.md: 1 MB in the wheel instead of a ~40 s zig build
  and a PyPI download at first start);
- ``manifest.json``: what was carried, its pins and the wheel's tag.

The migrations of both databases are the ``server`` package's data (pyproject.toml). The sources
are copied to a staging folder first (files git knows, tracked or not ignored), so nothing stray
in the checkout lands in the wheel; setuptools builds it there (pip, with build isolation) and the
tag is ``py3-none-<platform>``: Python code plus one native binary, like ruff's wheels.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.resources import CARRIED_PACKAGES  # noqa: E402
from runtime.wasm_build import guest_name, guest_wasm  # noqa: E402

# npm's name for a platform (the @esbuild/<platform> package) -> the wheel's platform tag. esbuild's
# Linux binaries are static, so the oldest manylinux tag pip knows is honest.
WHEEL_PLATFORMS = {
    "linux-x64": "manylinux_2_17_x86_64",
    "linux-arm64": "manylinux_2_17_aarch64",
    "darwin-x64": "macosx_10_12_x86_64",
    "darwin-arm64": "macosx_11_0_arm64",
    "win32-x64": "win_amd64",
    "win32-arm64": "win_arm64",
}
SOURCES = ("runtime", "server", "client", "pyproject.toml", "README.md")
DATA = "runtime/resources-data"


def host_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform, sys.platform)
    return f"{system}-{arch}"


def lock_pins() -> dict[str, dict[str, str]]:
    """package-lock.json's entry (version, integrity) of every package under node_modules/."""
    packages = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    return {key.removeprefix("node_modules/"): value for key, value in packages.items() if key}


def installed_package(name: str, pin: dict[str, str]) -> Path:
    """node_modules/<name> as ``npm ci`` installed it; refuses a version other than the lock's."""
    folder = ROOT / "node_modules" / name
    try:
        version = json.loads((folder / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise SystemExit(f"build_wheel: node_modules/{name} is missing; run `make setup`") from None
    if version != pin["version"]:
        raise SystemExit(f"build_wheel: node_modules/{name} is {version}, package-lock.json pins {pin['version']}")
    return folder


def packed_package(name: str, pin: dict[str, str], work: Path) -> Path:
    """A package for another platform: ``npm pack`` of the pinned version, checked against the lock."""
    spec = f"{name}@{pin['version']}"
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(work), "--loglevel=error"],
        capture_output=True,
        text=True,
        check=True,
    )
    tarball = work / json.loads(out.stdout)[0]["filename"]
    algorithm, _, expected = pin["integrity"].partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if actual != expected:
        raise SystemExit(f"build_wheel: {spec} does not match package-lock.json's integrity")
    target = work / "unpacked" / name
    with tarfile.open(tarball) as tar:
        tar.extractall(target.parent / "tmp", filter="data")
    shutil.move(target.parent / "tmp" / "package", target)
    return target


def git_files(paths: tuple[str, ...]) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return sorted({name for name in out.stdout.decode().split("\0") if name and (ROOT / name).is_file()})


def stage(staging: Path, npm_platform: str, tag: str, work: Path) -> dict[str, Any]:
    for name in git_files(SOURCES):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, staging / name)
    data = staging / DATA
    pins = lock_pins()
    carried: dict[str, dict[str, str]] = {}
    for name in CARRIED_PACKAGES:
        shutil.copytree(installed_package(name, pins[name]), data / "node_modules" / name, symlinks=False)
        carried[name] = {"version": pins[name]["version"], "integrity": pins[name]["integrity"]}
    esbuild_name = f"@esbuild/{npm_platform}"
    if esbuild_name not in pins:
        raise SystemExit(f"build_wheel: package-lock.json has no {esbuild_name}")
    pin = pins[esbuild_name]
    if pin["version"] != pins["esbuild"]["version"]:
        raise SystemExit(f"build_wheel: {esbuild_name} {pin['version']} is not esbuild {pins['esbuild']['version']}")
    local = ROOT / "node_modules" / esbuild_name
    source = installed_package(esbuild_name, pin) if local.is_dir() else packed_package(esbuild_name, pin, work)
    shutil.copytree(source, data / "node_modules" / esbuild_name)
    carried[esbuild_name] = {"version": pin["version"], "integrity": pin["integrity"]}
    shutil.copytree(ROOT / "js_shims", data / "js_shims", ignore=shutil.ignore_patterns("tests"))
    dist = ROOT / "dashboard" / "dist"
    if not (dist / "index.html").is_file():
        raise SystemExit("build_wheel: dashboard/dist is not built; run `make setup`")
    shutil.copytree(dist, data / "dashboard" / "dist")
    (data / "wasm").mkdir()
    shutil.copy2(ROOT / "wasm" / "guest.c", data / "wasm" / "guest.c")
    shutil.copy2(guest_wasm(), data / "wasm" / guest_name())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    manifest: dict[str, Any] = {
        "statehost": version,
        "platform": npm_platform,
        "tag": f"py3-none-{tag}",
        "packages": carried,
        "guest": guest_name(),
    }
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # bdist_wheel's options: one wheel per platform, for any Python 3 (no extension modules).
    (staging / "setup.cfg").write_text(f"[bdist_wheel]\npython_tag = py3\nplat_name = {tag}\n")
    return manifest


REQUIRED = (
    f"{DATA}/manifest.json",
    f"{DATA}/node_modules/xstate4/package.json",
    f"{DATA}/node_modules/xstate5/package.json",
    f"{DATA}/node_modules/@statebacked/machine/package.json",
    f"{DATA}/js_shims/host.d.ts",
    f"{DATA}/dashboard/dist/index.html",
    f"{DATA}/wasm/guest.c",
    "runtime/resources.py",
)


def check(wheel: Path, manifest: dict[str, Any]) -> None:
    """The wheel holds what a server needs, and esbuild's binary stays executable."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        migrations = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "server" / "migrations").rglob("*.sql"))]
        missing = [name for name in (*REQUIRED, *migrations) if name not in names]
        missing += [] if f"{DATA}/wasm/{manifest['guest']}" in names else [f"{DATA}/wasm/{manifest['guest']}"]
        binaries = [
            n
            for n in names
            if n.startswith(f"{DATA}/node_modules/@esbuild/") and n.endswith(("/bin/esbuild", "/esbuild.exe"))
        ]
        if not binaries:
            missing.append(f"{DATA}/node_modules/@esbuild/<platform>/bin/esbuild")
        if missing:
            raise SystemExit(f"build_wheel: {wheel.name} lacks {', '.join(missing)}")
        mode = archive.getinfo(binaries[0]).external_attr >> 16
        if not binaries[0].endswith(".exe") and not mode & 0o100:
            raise SystemExit(f"build_wheel: {binaries[0]} is not executable in the wheel (mode {mode:o})")
        record = archive.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        if f"Tag: {manifest['tag']}" not in record:
            raise SystemExit(f"build_wheel: the wheel's tag is not {manifest['tag']}:\n{record}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build statehost's wheel for one platform (no node needed to run it).")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the wheel goes (default dist/)")
    parser.add_argument(
        "--platform",
        default=host_platform(),
        choices=sorted(WHEEL_PLATFORMS),
        help="npm's name of the platform whose esbuild binary the wheel carries (default: this machine's)",
    )
    args = parser.parse_args(argv)
    tag = WHEEL_PLATFORMS[args.platform]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="statehost-wheel-") as tmp:
        work = Path(tmp)
        staging = work / "src"
        staging.mkdir()
        manifest = stage(staging, args.platform, tag, work)
        built = work / "wheel"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(staging)],
            check=True,
        )
        (wheel,) = built.glob("*.whl")
        check(wheel, manifest)
        target = args.out / wheel.name
        shutil.copyfile(wheel, target)
    size = target.stat().st_size
    carried = ", ".join(f"{name} {pin['version']}" for name, pin in manifest["packages"].items())
    print(f"{target} ({size:,} bytes, {size / 2**20:.1f} MiB), carrying {carried}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
