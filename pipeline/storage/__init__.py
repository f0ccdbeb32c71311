"""What a run leaves on disk and how it is read back.

- `layout`: where everything of a run lives (shards, images, generator record).
- `manifest`: the Parquet shards, written atomically against `data_schemas.manifest`.
- `ledger`, `shard_claim`, `integrity`: the record of committed shards, claims that keep two
  workers off one shard, and the check that files still match what was committed.
- `splits`: the train/validation/test split of every seed, the same for every reader.
- `summary`, `card`: a run's statistics, plots and dataset card.
- `dataset`, `huggingface`: loaders for PyTorch and Hugging Face `datasets`.

The run stages write through these modules; nothing here renders, scores or trains.
"""
