"""Held-out judges: models that measure exprlock's output and never shape it.

A judge is used by evaluation only. No training loss, refinement, candidate selection, label,
threshold or default choice may depend on one, otherwise the numbers they report would measure
how well the pipeline learned to please them. The judges are kept apart from the in-pipeline
models (`pipeline.models`) in every way that matters: other architectures, other training data
where it exists, and their own face finding (their authors' detectors, not the pipeline's YuNet).

- `dlib68`: dlib's 68-point shape predictor (iBUG 300-W) on faces found by dlib's HOG detector.
- `pyemotion`: PyEmotion 1.0.0's FER2013 CNN on its authors' grey 48x48 crop of the face
  MTCNN finds (`mtcnn`, facenet-pytorch's cascade, which PyEmotion uses).
- `scores`: both judges over a run's images, with the per-edit metrics evaluation reports.

`tests/test_judge_isolation.py` walks the imports of every other module to prove that only
evaluation reaches this package.
"""
