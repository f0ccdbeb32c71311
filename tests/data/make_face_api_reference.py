"""Make `face_api_reference.npz`: fixed faces and what face-api's own code says about them
(expression logits and probabilities, age, gender logits and probabilities).

One command, in an empty folder with Node.js 20 and the npm registry reachable:

    npm install @vladmandic/face-api@1.7.15 @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0
    python tests/data/make_face_api_reference.py ./node_modules

The inputs are demo-generator faces at their own 64x64 size (face-api resizes them), a 112x112
face, a non-square crop (face-api pads it to a square) and uniform noise at 112x112.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.generators.dcgan import load_dcgan

HERE = Path(__file__).resolve().parent


def reference_inputs() -> list[np.ndarray]:
    generator = load_dcgan()
    faces = generator.render(generator.sample_latents(range(6))).numpy()
    large = np.asarray(Image.fromarray(faces[0]).resize((112, 112), Image.BILINEAR))
    noise = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    return [*faces, large, faces[1][8:56], faces[2][:, 4:60], noise]


def main(node_modules: str) -> None:
    inputs = reference_inputs()
    with tempfile.TemporaryDirectory() as scratch:
        request, answer = Path(scratch) / "inputs.json", Path(scratch) / "outputs.json"
        request.write_text(json.dumps([
            {"shape": list(image.shape), "data": base64.b64encode(np.ascontiguousarray(image).tobytes()).decode()}
            for image in inputs
        ]))
        subprocess.run(["node", str(HERE / "face_api_reference.mjs"), str(request), str(answer), node_modules], check=True)
        result = json.loads(answer.read_text())
    arrays = {f"input_{i}": image for i, image in enumerate(inputs)}
    arrays["logits"] = np.array([o["logits"] for o in result["outputs"]], dtype=np.float32)
    arrays["probabilities"] = np.array([o["probabilities"] for o in result["outputs"]], dtype=np.float32)
    arrays["age"] = np.array([o["age"] for o in result["outputs"]], dtype=np.float32)
    arrays["gender_logits"] = np.array([o["gender_logits"] for o in result["outputs"]], dtype=np.float32)
    arrays["gender"] = np.array([o["gender"] for o in result["outputs"]], dtype=np.float32)  # (male, female)
    arrays["runtime"] = np.array(f"@vladmandic/face-api 1.7.15, tfjs {result['tfjs']}, backend {result['backend']}")
    np.savez_compressed(HERE / "face_api_reference.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
