"""Install or remove kvtui's companion SillyTavern extension (``kvtui sillytavern install``).

The extension (``kvtui/sillytavern/extension/``: manifest.json, index.js, style.css) is a
third-party UI extension. SillyTavern 1.19 loads third-party extensions from two places (its
``/api/extensions/discover``): a user's ``data/<user>/extensions/<name>`` and, for every user,
``public/scripts/extensions/third-party/<name>``. ``install_extension`` takes any of: a
SillyTavern folder (the one with ``server.js``), its data root, or one user's directory
(``data/default-user``, kvtui's ``st_dir``), and installs into the user's extensions folder when
there is one, else into the global third-party folder.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from kvtui.errors import KvtuiError
from kvtui.settings import Settings

EXTENSION_NAME = "kvtui"
FILES = ("manifest.json", "index.js", "style.css")
DEFAULT_USER = "default-user"


class InstallError(KvtuiError):
    """The extension could not be installed or removed (the message says why and what to do)."""


def _is_root(path: Path) -> bool:
    return (path / "server.js").is_file() and (path / "public").is_dir()


def _is_user_dir(path: Path) -> bool:
    return (path / "settings.json").is_file() or (path / "characters").is_dir()


def _data_root(root: Path) -> Path:
    """The ``dataRoot`` of a SillyTavern folder (from its config.yaml; default ``data``)."""
    config = root / "config.yaml"
    value = "./data"
    try:
        match = re.search(r"^dataRoot:\s*(.+?)\s*$", config.read_text(encoding="utf-8"), re.M)
    except OSError:
        match = None
    if match:
        value = match.group(1).strip().strip("'\"")
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def target_dirs(where: Path) -> list[Path]:
    """Where the extension goes (first) or may already be, for ``where`` (see the module doc)."""
    where = where.expanduser()
    if not where.is_dir():
        raise InstallError(
            f"{where} is not a folder. Give --st-dir the SillyTavern folder (with server.js), "
            "its data folder, or data/<user>."
        )
    global_dir: Path | None = None
    user_dir: Path | None = None
    if _is_root(where):
        global_dir = where / "public" / "scripts" / "extensions" / "third-party"
        candidate = _data_root(where) / DEFAULT_USER
        user_dir = candidate if candidate.is_dir() else None
    elif _is_user_dir(where):
        user_dir = where
    elif (where / DEFAULT_USER).is_dir():
        user_dir = where / DEFAULT_USER
    else:
        raise InstallError(
            f"{where} does not look like SillyTavern (no server.js, settings.json or "
            f"{DEFAULT_USER}/). Give --st-dir the SillyTavern folder or data/<user>."
        )
    dirs = []
    if user_dir is not None:
        dirs.append(user_dir / "extensions" / EXTENSION_NAME)
    if global_dir is not None:
        dirs.append(global_dir / EXTENSION_NAME)
    return dirs


def _source() -> Any:
    return resources.files("kvtui.sillytavern") / "extension"


def _is_ours(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("display_name") == EXTENSION_NAME
        and manifest.get("author") == EXTENSION_NAME
    )


def install_extension(where: Path) -> Path:
    """Copy the extension into SillyTavern at ``where``; returns the folder written."""
    target = target_dirs(Path(where))[0]
    if target.exists() and not _is_ours(target):
        raise InstallError(
            f"{target} exists and is not kvtui's extension; move it away and run this again."
        )
    source = _source()
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            (target / name).write_bytes((source / name).read_bytes())
    except OSError as err:
        raise InstallError(f"Cannot write {target}: {err.strerror or err}") from err
    return target


def uninstall_extension(where: Path) -> list[Path]:
    """Remove kvtui's extension from every place it is installed for ``where``."""
    removed = []
    for folder in target_dirs(Path(where)):
        if folder.is_dir() and _is_ours(folder):
            try:
                shutil.rmtree(folder)
            except OSError as err:
                raise InstallError(f"Cannot remove {folder}: {err.strerror or err}") from err
            removed.append(folder)
    return removed


# -- the ``kvtui sillytavern`` command ----------------------------------------------------------


def add_sillytavern_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sillytavern install|uninstall [--st-dir DIR]`` to kvtui's command parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sillytavern",
        help="install or remove kvtui's SillyTavern extension",
        description="Install or remove kvtui's companion SillyTavern extension, which tells "
        "kvtui exactly which chat and character each request is for.",
    )
    actions = parser.add_subparsers(dest="st_action", metavar="ACTION")
    for name, text in (
        ("install", "install (or update) the extension"),
        ("uninstall", "remove the extension"),
    ):
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument(
            "--st-dir",
            metavar="DIR",
            type=Path,
            default=argparse.SUPPRESS,
            help="the SillyTavern folder, its data folder or data/<user> (default: st_dir)",
        )
    return parser


def run_sillytavern(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``kvtui sillytavern …``; returns the exit code (0 ok, 1 failed, 2 bad usage)."""
    action = getattr(args, "st_action", None)
    if action not in ("install", "uninstall"):
        print("kvtui sillytavern: say install or uninstall (see --help)", file=sys.stderr)
        return 2
    where = getattr(args, "st_dir", None) or settings.st_dir
    if where is None:
        print(
            "kvtui sillytavern: where is SillyTavern? Give --st-dir DIR (the SillyTavern folder "
            "or data/<user>), or set st_dir in the config file.",
            file=sys.stderr,
        )
        return 2
    try:
        if action == "install":
            folder = install_extension(Path(where))
            print(f"Installed kvtui's SillyTavern extension in {folder}.")
            print("Reload SillyTavern's page; it shows under Extensions as 'kvtui'.")
        else:
            removed = uninstall_extension(Path(where))
            if not removed:
                print(f"kvtui's SillyTavern extension is not installed for {where}.")
            for folder in removed:
                print(f"Removed {folder}. Reload SillyTavern's page.")
    except InstallError as err:
        print(f"kvtui sillytavern: {err}", file=sys.stderr)
        return 1
    return 0
