"""The stages of the pipeline, each a command and a Prefect flow: `discovery` (score samples,
fit directions), `train_editors`, `generate` (render, edit, score, commit shards; `shards` makes
each exactly once), and the reports built on finished runs, `evaluation` and `label_report`.
They read and write through `pipeline.storage`."""
