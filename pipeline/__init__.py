"""The label data path: from a list of videos to one Parquet row per video.

See docs/architecture.md for the picture; in short: `settings` -> `plan` ->
`job` (Ray Data: `decode_stage` -> `model_stage`) -> `sink`, with `store`,
`listing`, `decoders`, `sampling`, `transforms`, `isolation`, `contract`,
`resume` and `stall` as the parts they are built from.
"""
