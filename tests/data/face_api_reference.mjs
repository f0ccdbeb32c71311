// Reference outputs of face-api's expression and age-gender networks, run by the package itself on tfjs's CPU
// backend. Called by make_face_api_reference.py, which says how to set it up:
//   node face_api_reference.mjs INPUTS.json OUTPUTS.json NODE_MODULES
import fs from 'fs';
import path from 'path';
import { createRequire } from 'module';

const [inputsPath, outputsPath, nodeModules] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nodeModules), 'noop.js'));
const tf = require('@tensorflow/tfjs');
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');

await tf.setBackend('cpu');
await tf.ready();
await faceapi.nets.faceExpressionNet.loadFromDisk(path.join(nodeModules, '@vladmandic/face-api/model'));
await faceapi.nets.ageGenderNet.loadFromDisk(path.join(nodeModules, '@vladmandic/face-api/model'));

const inputs = JSON.parse(fs.readFileSync(inputsPath, 'utf8'));
const outputs = [];
for (const { shape, data } of inputs) {
  const pixels = Uint8Array.from(Buffer.from(data, 'base64'));
  const image = tf.tensor3d(pixels, shape, 'int32');
  const netInput = await faceapi.toNetInput(image);
  const logits = faceapi.nets.faceExpressionNet.runNet(netInput);
  const probabilities = await faceapi.nets.faceExpressionNet.predictExpressions(image);
  const ageGender = faceapi.nets.ageGenderNet.runNet(netInput);
  const { age, gender } = faceapi.nets.ageGenderNet.forwardInput(netInput);
  outputs.push({
    logits: Array.from(logits.dataSync()),
    probabilities: faceapi.FACE_EXPRESSION_LABELS.map((label) => probabilities[label]),
    age: age.dataSync()[0],
    gender_logits: Array.from(ageGender.gender.dataSync()),
    gender: Array.from(gender.dataSync()),
  });
  tf.dispose([image, logits, ageGender.age, ageGender.gender, age, gender]);
}
fs.writeFileSync(outputsPath, JSON.stringify({ backend: tf.getBackend(), tfjs: tf.version.tfjs, outputs }));
