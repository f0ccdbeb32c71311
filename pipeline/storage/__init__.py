"""What a run leaves on disk and how it is read back.

- `layout`: where everything of a run lives (shards, images, generator record).
- `manifest`: the Parquet shards, written atomically against `data_schemas.manifest`.
- `ledger`, `shard_claim`, `integrity`: the record of committed shards, claims that keep two
  workers off one shard, and the check that files still match what was committed.
- `splits`: the train/validation/test split of every seed, the same for every reader.
- `image_view`: one row per image (each source face and each edit once), what training reads.
- `summary`, `card`: a run's statistics (counted in faces), plots, dataset card and terms.
- `dataset`, `huggingface`: loaders for PyTorch and Hugging Face `datasets`.
- `export`: a run's images in the layouts training code reads (class folders, HF, CSV).
- `reports`: report folders that are never overwritten by surprise.

The run stages write through these modules; nothing here renders, scores or trains.
"""
