"""``kvtui sillytavern install|uninstall``: where the companion extension goes, on real folders.

These need no SillyTavern install: they build the folder shapes SillyTavern 1.19 has (its
``server.js`` + ``public/`` root with a config.yaml ``dataRoot``, a data root, a user directory).
The e2e test proves the installed extension is loaded by the real SillyTavern.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from kvtui.settings import Settings
from kvtui.sillytavern.install import (
    FILES,
    InstallError,
    add_sillytavern_parser,
    install_extension,
    run_sillytavern,
    uninstall_extension,
)

SOURCE = Path(__file__).resolve().parents[2] / "kvtui" / "sillytavern" / "extension"


def _st_root(tmp_path: Path, data_root: str | None = None) -> Path:
    root = tmp_path / "SillyTavern"
    (root / "public" / "scripts" / "extensions" / "third-party").mkdir(parents=True)
    (root / "server.js").write_text("// SillyTavern\n")
    if data_root is not None:
        (root / "config.yaml").write_text(f"listen: false\ndataRoot: {data_root}\nport: 8000\n")
    return root


def _user_dir(base: Path) -> Path:
    user = base / "default-user"
    (user / "characters").mkdir(parents=True)
    (user / "settings.json").write_text("{}")
    return user


def test_installs_into_the_user_extensions_folder_with_identical_files(tmp_path: Path) -> None:
    root = _st_root(tmp_path)
    user = _user_dir(root / "data")
    folder = install_extension(root)
    assert folder == user / "extensions" / "kvtui"
    for name in FILES:
        assert (folder / name).read_bytes() == (SOURCE / name).read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["js"] == "index.js" and manifest["css"] == "style.css"


def test_follows_the_config_data_root_and_accepts_a_user_or_data_dir(tmp_path: Path) -> None:
    elsewhere = tmp_path / "st-data"
    root = _st_root(tmp_path, data_root=str(elsewhere))
    user = _user_dir(elsewhere)
    assert install_extension(root) == user / "extensions" / "kvtui"
    assert install_extension(user) == user / "extensions" / "kvtui"
    assert install_extension(elsewhere) == user / "extensions" / "kvtui"


def test_without_a_user_directory_installs_for_every_user(tmp_path: Path) -> None:
    root = _st_root(tmp_path)  # SillyTavern never started: no data/default-user yet
    folder = install_extension(root)
    assert folder == root / "public" / "scripts" / "extensions" / "third-party" / "kvtui"
    assert (folder / "index.js").is_file()


def test_install_twice_updates_and_uninstall_removes_only_kvtui(tmp_path: Path) -> None:
    root = _st_root(tmp_path)
    user = _user_dir(root / "data")
    folder = install_extension(root)
    (folder / "index.js").write_text("old")
    assert install_extension(root) == folder
    assert (folder / "index.js").read_bytes() == (SOURCE / "index.js").read_bytes()
    other = user / "extensions" / "SillyTavern-MemoryBooks"
    other.mkdir()
    (other / "manifest.json").write_text('{"display_name": "Memory Books"}')
    assert uninstall_extension(root) == [folder]
    assert not folder.exists() and other.is_dir()
    assert uninstall_extension(root) == []


def test_refuses_to_overwrite_a_foreign_kvtui_folder(tmp_path: Path) -> None:
    user = _user_dir(tmp_path)
    foreign = user / "extensions" / "kvtui"
    foreign.mkdir(parents=True)
    (foreign / "manifest.json").write_text('{"display_name": "something else"}')
    with pytest.raises(InstallError, match="not kvtui's extension"):
        install_extension(user)
    assert json.loads((foreign / "manifest.json").read_text()) == {"display_name": "something else"}


def test_not_sillytavern_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="does not look like SillyTavern"):
        install_extension(tmp_path)
    with pytest.raises(InstallError, match="is not a folder"):
        install_extension(tmp_path / "missing")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvtui")
    parser.add_argument("--st-dir", type=Path, default=None)
    add_sillytavern_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_installs_and_uninstalls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _st_root(tmp_path)
    user = _user_dir(root / "data")
    settings = Settings(state_dir=tmp_path / "state")
    args = _parse(["sillytavern", "install", "--st-dir", str(root)])
    assert run_sillytavern(args, settings) == 0
    assert (user / "extensions" / "kvtui" / "index.js").is_file()
    assert "Installed" in capsys.readouterr().out
    # --st-dir before the command name, or st_dir from the settings, work too
    assert (
        run_sillytavern(_parse(["--st-dir", str(user), "sillytavern", "uninstall"]), settings) == 0
    )
    assert not (user / "extensions" / "kvtui").exists()
    with_dir = Settings(state_dir=tmp_path / "state", st_dir=user)
    assert run_sillytavern(_parse(["sillytavern", "install"]), with_dir) == 0


def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    assert run_sillytavern(_parse(["sillytavern", "install"]), settings) == 2
    assert "--st-dir" in capsys.readouterr().err
    assert run_sillytavern(_parse(["sillytavern"]), settings) == 2
    assert "install or uninstall" in capsys.readouterr().err
    bad = _parse(["sillytavern", "install", "--st-dir", str(tmp_path)])
    assert run_sillytavern(bad, settings) == 1
    err = capsys.readouterr().err
    assert err.startswith("kvtui sillytavern:") and len(err.strip().splitlines()) == 1
